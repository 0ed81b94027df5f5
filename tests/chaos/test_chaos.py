"""The short fault-injection suite, run as `make chaos CHAOS_ARGS=--short` would, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.background import wait_for_background

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.quiet]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(1200)
def test_short_chaos_suite_holds_every_invariant(request: pytest.FixtureRequest) -> None:
    # Its stall scenarios hold answers to 5 s: never beside the bench smoke run (tests/background.py).
    wait_for_background(request.config, timeout=600)
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--short"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # Every scenario ran and reported PASS (the exit code alone would also pass an empty run).
    for name in (
        "kill-submit",
        "kill-archive",
        "redis-restart",
        "postgres-stop",
        "s3-503",
        "webhook-restart",
        "drop-callbacks",
        "redis-stall",
        "postgres-stall",
        "backlog-redis-restart",
        "pack-runs-dry",
        "two-accounts",
    ):
        assert name in out, name
    assert out.count("PASS") >= 24, out[-6000:]  # one row per scenario, printed again in the summary
    assert "FAIL" not in out
