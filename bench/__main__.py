"""`python -m bench [--smoke] [--only NAME ...] [--scale-jobs N] [--out PATH]`: run, print the
table, write JSON.

Exit status: 0 when every target is met (in --smoke: when every benchmark ran; the smoke sizes
are too small for the targets to mean anything, so they are shown but not enforced), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench import infra
from bench.context import Context
from bench.report import BenchResult, render, write

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


# name -> "module:function", imported only when that benchmark runs.
BENCHES = {
    "ingest": "bench.ingest:run",
    "utilisation": "bench.pipeline_bench:run_utilisation",
    "archive": "bench.archive:run",
    "latency": "bench.pipeline_bench:run_latency",
    "scale": "bench.scale:run",
    "backlog": "bench.backlog:run",
    "tenants": "bench.tenants:run",
}


def _load(spec: str) -> Callable[[Context], BenchResult]:
    module, _, func = spec.partition(":")
    fn: Callable[[Context], BenchResult] = getattr(importlib.import_module(module), func)
    return fn


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    benches = BENCHES
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes, targets not enforced")
    parser.add_argument("--only", action="append", choices=sorted(benches), help="run only this (repeatable)")
    parser.add_argument(
        "--scale-jobs",
        type=_positive,
        metavar="N",
        help="jobs seeded by the scale benchmark (default 100,000; smoke 5,000)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    console = Console(width=130)
    names = args.only or list(benches)
    results: list[BenchResult] = []
    with infra.moto_server() as s3_endpoint:
        ctx = Context(smoke=args.smoke, s3_endpoint=s3_endpoint, scale_jobs=args.scale_jobs)
        for name in names:
            console.print(f"[bold]running {name}[/bold]{' (smoke)' if args.smoke else ''}")
            start = time.monotonic()
            try:
                result = _load(benches[name])(ctx)
            except Exception as exc:
                traceback.print_exc()
                result = BenchResult(name, 0.0, error=f"{type(exc).__name__}: {exc}")
            result.seconds = time.monotonic() - start
            results.append(result)
    render(results, console)
    write(args.out, results, smoke=args.smoke)
    console.print(f"results written to {args.out}")
    errors = [r.name for r in results if r.error]
    missed = [f"{f.bench}/{f.name}" for r in results for f in r.figures if f.passed is False]
    if errors:
        console.print(f"[red]benchmarks that did not run: {', '.join(errors)}[/red]")
    if missed:
        console.print(f"[yellow]targets missed: {', '.join(missed)}[/yellow]")
    if errors or (missed and not args.smoke):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
