"""`python -m chaos [--short] [--only SCENARIO]`: the fault-injection suite (`make chaos`)."""

from __future__ import annotations

import dataclasses
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from chaos.scenarios import FULL, NAMES, SCENARIOS, SHORT, Result, run
from chaos.stack import ChaosStack, Tuning


def table(results: list[Result], *, title: str) -> Table:
    t = Table(title=title)
    for name, justify in [
        ("scenario", "left"),
        ("fault", "left"),
        ("submitted", "right"),
        ("archived", "right"),
        ("failed (expected)", "right"),
        ("duplicates", "right"),
        ("leaked slots", "right"),
        ("bad images", "right"),
        ("seconds", "right"),
        ("result", "center"),
    ]:
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        c = r.check
        t.add_row(
            r.name,
            r.fault,
            str(r.submitted),
            str(c.archived),
            f"{c.failed} ({r.expected_failed})",
            str(c.duplicates),
            str(c.leaked_slots),
            str(c.bad_images),
            f"{r.seconds:.1f}",
            "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]",
        )
    return t


def parse_tuning(items: tuple[str, ...]) -> Tuning:
    fields = {f.name: f for f in dataclasses.fields(Tuning)}
    changes: dict[str, float | int] = {}
    for item in items:
        name, _, raw = item.partition("=")
        if name not in fields:
            raise click.BadParameter(
                f"unknown field {name!r}; one of {', '.join(fields)}", param_hint="--tune"
            )
        try:
            changes[name] = int(raw) if fields[name].type == "int" else float(raw)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {raw!r} is not a number", param_hint="--tune") from None
    return dataclasses.replace(Tuning(), **changes)  # type: ignore[arg-type]


@click.command()
@click.option("--short", is_flag=True, help="Fewer jobs and shorter outages (the CI version).")
@click.option(
    "--only", "only", multiple=True, type=click.Choice(NAMES), help="Run only this scenario (repeatable)."
)
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the job mix.")
@click.option(
    "--keep", is_flag=True, help="Keep the temp dir (data and logs) even when every scenario passes."
)
@click.option(
    "--tune",
    multiple=True,
    metavar="FIELD=NUMBER",
    help="Override a stack timing (chaos.stack.Tuning), e.g. --tune stuck_submit_seconds=300. Repeatable.",
)
def main(*, short: bool, only: tuple[str, ...], seed: int, keep: bool, tune: tuple[str, ...]) -> None:
    """Start a private stack, inject each fault with jobs in flight, check nothing is lost or doubled."""
    # A pipe (make, CI logs) gets 80 columns by default, which folds the table past reading.
    console = Console(width=None if sys.stdout.isatty() else 160)
    profile = SHORT if short else FULL
    scenarios = [s for s in SCENARIOS if not only or s.name in only]
    root = Path(tempfile.mkdtemp(prefix="kling-chaos-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when we are root and must reach its data dir
    stack = ChaosStack(root, parse_tuning(tune))
    rng = random.Random(seed)  # noqa: S311  (a reproducible job mix, not crypto)
    results: list[Result] = []
    began = time.monotonic()
    console.print(
        f"chaos: {'short' if short else 'full'} run, {profile.jobs} jobs per scenario, "
        f"{len(scenarios)} scenario(s); data and logs in {root}"
    )
    try:
        stack.start()
        console.print(f"stack up in {time.monotonic() - began:.1f} s")
        for scenario in scenarios:
            notes: list[str] = []
            console.print(f"[bold]{scenario.name}[/bold]: {scenario.fault} ...")
            result = run(stack, scenario, profile, rng, notes)
            results.append(result)
            for note in notes:
                console.print(f"  {note}")
            for problem in result.problems[:10]:
                console.print(f"  [red]{problem}[/red]")
            console.print(table([result], title=""))
    except Exception as exc:  # noqa: BLE001  (report what ran, then fail)
        console.print(f"[red]chaos suite aborted: {type(exc).__name__}: {exc}[/red]")
        results.append(Result("suite", "aborted", problems=[str(exc)]))
    finally:
        stack.close()
    total = time.monotonic() - began
    console.print(
        table(
            results,
            title=f"Fault injection ({'short' if short else 'full'}): {platform.node()}, "
            f"{platform.machine()}, Python {platform.python_version()}, {total:.0f} s total",
        )
    )
    failed = [r for r in results if not r.passed]
    if failed:
        console.print(f"[red]FAIL: {', '.join(r.name for r in failed)}[/red]; logs kept in {root / 'logs'}")
        # Again at the end, where a caller that keeps only the tail of the output still sees why.
        for result in failed:
            for problem in result.problems[:10]:
                console.print(f"  {result.name}: [red]{problem}[/red]")
        sys.exit(1)
    console.print("[green]every invariant held[/green]")
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
