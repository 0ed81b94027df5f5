"""Long end-to-end runs that go on beside the rest of the suite: the bench smoke run.

`python -m bench --smoke` takes minutes of mostly waiting on services of its own (private
databases, Redis db 11, its own simulator and moto) and has no timing bound to miss when the
machine is busy. So it starts as soon as collection ends, and the test that checks it (marked
`background`, moved to the end of the run) waits for its result: the suite takes minutes less and
checks exactly the same. The short chaos run stays in the foreground, marked `quiet`: its
stalled-dependency scenarios hold answers to 5 s, which a machine shared with the rest of the
suite can miss (`POST` answered 503 after 6.0 s in one such run), so it runs near the end, after
the background runs have ended (`wait_for_background`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """One `python -m ...` run: its command line, its time limit, and once done its result."""

    name: str
    argv: list[str]
    timeout: float
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kling-bg-")))
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen[bytes] | None = None

    def execute(self) -> None:
        log = self.workdir / "output.log"
        started = time.monotonic()
        try:
            with log.open("wb") as out:
                # A session of its own, so a time-out or the end of the suite stops its whole tree.
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", *self.argv],
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    self.returncode = self.proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    self.stop()
                    self.returncode = self.proc.wait()
                    out.write(f"\n[background: killed after {self.timeout:.0f} s]\n".encode())
        finally:
            self.seconds = time.monotonic() - started
            self.output = log.read_text(errors="replace") if log.exists() else ""
            self.done.set()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class Background:
    """Runs its `Run`s one after another in a thread; `result(name)` waits for one."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = {run.name: run for run in runs}
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="background-runs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _work(self) -> None:
        for run in self.runs.values():
            if self._stopping:
                run.output = "[background: the suite ended before this run started]"
                run.done.set()
                continue
            run.execute()

    def result(self, name: str, timeout: float) -> Run:
        run = self.runs[name]
        if not run.done.wait(timeout):
            raise TimeoutError(f"background run {name} not done after waiting {timeout:.0f} s")
        return run

    def summary(self) -> str:
        parts = [
            f"{run.name} {run.seconds:.0f} s (exit {run.returncode})"
            if run.done.is_set()
            else f"{run.name} unfinished"
            for run in self.runs.values()
        ]
        return "background runs: " + ", ".join(parts)

    def wait_all(self, timeout: float) -> None:
        """Until every run has ended (or `timeout` seconds have passed)."""
        deadline = time.monotonic() + timeout
        for run in self.runs.values():
            run.done.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stopping = True
        for run in self.runs.values():
            run.stop()


def planned_runs(names: list[str]) -> list[Run]:
    """The runs the selected `background` tests ask for, one after another in this order."""
    smoke = Run("bench-smoke", ["bench", "--smoke"], timeout=480)
    smoke.argv += ["--out", str(smoke.workdir / "results.json")]
    table = {run.name: run for run in (smoke,)}
    return [table[name] for name in table if name in names]


BACKGROUND = pytest.StashKey[Background]()


def wait_for_background(config: pytest.Config, timeout: float) -> None:
    """For a test that must not share the machine with the background runs (timing bounds)."""
    background = config.stash.get(BACKGROUND, None)
    if background is not None:
        background.wait_all(timeout)
