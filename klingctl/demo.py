"""`klingctl demo`: the whole service in one process, a batch of jobs, and proof every output was kept.

The stack (klingctl/demo_stack.py) starts every part over real wires; the batch
(klingctl/demo_batch.py) is planned, submitted and verified there; this module is the command, the
live panel and the report.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from klingctl.common import console, settings
from klingctl.demo_batch import Batch, Verdict, failed_on_account, snapshot, submit, verify
from klingctl.demo_stack import DemoStack
from klingctl.render import counts_panel, status_text
from klingctl.stopping import stop_raises, wait_for_stop

REFRESH_SECONDS = 0.25


def watch(run: DemoStack, batch: Batch, out: Console, timeout: float) -> bool:
    """Live progress until every job is final; False when the deadline passes first."""
    ids = batch.ids
    started = time.monotonic()
    deadline = started + timeout

    def frame() -> tuple[Any, bool]:
        counts, archived, total, nbytes = snapshot(run, ids)
        done = sum(counts.get(s, 0) for s in ("archived", "failed")) == len(ids)
        extra = {
            "slots": f"{run.svc.limiter.in_use()}/{run.settings.kling_concurrency}",
            "outputs": f"{archived}/{total}",
            "archived": f"{nbytes / 1024:.0f} KiB",
            "elapsed": f"{time.monotonic() - started:.1f}s",
        }
        if batch.outage is not None:
            extra["pack"] = batch.outage.state(run.sim)
        return counts_panel(counts, extra, title=f"{len(ids)} jobs"), done

    panel, done = frame()
    with Live(panel, console=out, refresh_per_second=8, transient=False) as live:
        while not done and time.monotonic() < deadline:
            time.sleep(REFRESH_SECONDS)  # the display's refresh interval
            panel, done = frame()
            live.update(panel)
    out.line()
    return done


def results_table(verdicts: list[Verdict]) -> Table:
    table = Table(title="Demo jobs", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("kind")
    table.add_column("status")
    table.add_column("n", justify="right")
    table.add_column("ratio")
    table.add_column("S3 key", no_wrap=True)
    table.add_column("sha256 (S3 = DB = provider)", no_wrap=True)
    table.add_column("check")
    for v in verdicts:
        mark = Text("OK", style="green") if v.ok else Text("FAIL", style="bold red")
        table.add_row(
            v.job_id,
            v.kind,
            status_text(v.status),
            str(v.n),
            v.ratio,
            "\n".join(v.keys) or "-",
            "\n".join(h[:16] for h in v.sha256) or "-",
            Text.assemble(mark, f" {v.note}"),
        )
    return table


@click.command()
@click.option(
    "--jobs",
    "count",
    default=12,
    show_default=True,
    type=click.IntRange(1, 200),
    help="Image jobs in the batch.",
)
@click.option(
    "--data-dir",
    default="var",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the SQLite file and the log go.",
)
@click.option(
    "--drop-rate",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the other callbacks the simulator loses.",
)
@click.option("--timeout", default=50.0, show_default=True, type=click.FloatRange(1), help="Seconds to wait.")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the batch and the fault dice.")
@click.option("--serve", is_flag=True, help="Keep everything running after the check, until Ctrl-C.")
@click.option(
    "--dry-pack/--no-dry-pack",
    default=True,
    show_default=True,
    help="Let the resource pack run dry mid-run and top it up seconds later.",
)
@click.option(
    "--kinds/--no-kinds",
    default=True,
    show_default=True,
    help="Add a text_to_video and a try_on job, posted to /v1/jobs with their kind.",
)
def demo(
    *,
    count: int,
    data_dir: Path,
    drop_rate: float,
    timeout: float,
    seed: int,
    serve: bool,
    dry_pack: bool,
    kinds: bool,
) -> None:
    """Run the whole service in this process on a batch of jobs, then verify every output in S3.

    Embedded by default (SQLite file, in-process Celery worker and beat on a memory broker, moto S3,
    the simulator); DATABASE_URL, CELERY_BROKER_URL and S3_ENDPOINT_URL switch to real services.
    The batch: --jobs image jobs, plus a text_to_video and a try_on job (--no-kinds skips those).
    Exits 0 only if every job ended as expected: the content-policy job failed with 1301, every
    other job archived with each object's SHA-256 matching the database and the provider. Mid-run
    the resource pack runs dry for a few seconds (--no-dry-pack skips it): jobs wait, none fails.
    """
    out = console()
    run = DemoStack(settings(), env=os.environ, data_dir=data_dir, drop_rate=drop_rate, seed=seed)
    began = time.monotonic()
    # SIGTERM stops the demo as Ctrl-C does; a second signal during the shutdown is not caught.
    try:
        with stop_raises():
            run.start()
            passed = run_and_report(
                run, out, count=count, timeout=timeout, began=began, dry_pack=dry_pack, kinds=kinds
            )
            if serve:
                serving = (
                    f"Still serving: dashboard {run.where['dashboard']}#token={run.api_token} "
                    "(Ctrl-C or SIGTERM to stop)."
                )
                signum = wait_for_stop(ready=lambda: out.print(serving))
                out.print(f"{signal.Signals(signum).name}: stopping.")
    finally:
        run.close()
    if not passed:
        raise SystemExit(1)


def run_and_report(
    run: DemoStack, out: Console, *, count: int, timeout: float, began: float, dry_pack: bool, kinds: bool
) -> bool:
    """Print where everything is, run the batch, verify it, print the table; True when all passed."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in run.where.items():
        grid.add_row(name, value)
    grid.add_row("API token", run.api_token)
    out.print(Group(Text("Kling orchestrator demo", style="bold"), grid))
    batch = submit(run, count, dry_pack=dry_pack, kinds=kinds)
    finished = watch(run, batch, out, timeout)
    verdicts = verify(run, batch.jobs)
    passed = finished and all(v.ok for v in verdicts)
    if batch.outage is not None:
        out.print(batch.outage.summary(run.sim, failed_on_account(run, batch.ids))[1])
    report(out, verdicts, passed=passed, finished=finished, timeout=timeout, began=began, log=run.log_path)
    return passed


def report(
    out: Console,
    verdicts: list[Verdict],
    *,
    passed: bool,
    finished: bool,
    timeout: float,
    began: float,
    log: Path,
) -> None:
    out.print(results_table(verdicts))
    good = sum(v.ok for v in verdicts)
    types = [t for v in verdicts for t in v.types]
    summary = (
        f"{good}/{len(verdicts)} jobs reached their expected state; {types.count('image')} images and "
        f"{types.count('video')} videos read back from S3 and verified, in {time.monotonic() - began:.1f} s."
    )
    if not finished:
        summary += f" Timed out after {timeout:g} s; see {log}."
    verdict = Text("PASS ", style="bold green") if passed else Text("FAIL ", style="bold red")
    out.print(verdict + Text(summary))
