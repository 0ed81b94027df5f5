"""The short fault-injection suite, run as `make chaos CHAOS_ARGS=--short` would, so it cannot rot.

It runs beside the rest of the suite from the end of collection (tests/background.py): chaos
starts its own PostgreSQL, Redis and processes, so it shares nothing with the other tests.
"""

from __future__ import annotations

import pytest

from tests.background import Background

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.background("chaos")]


@pytest.mark.timeout(1200)
def test_short_chaos_suite_holds_every_invariant(background: Background) -> None:
    run = background.result("chaos", timeout=1150)
    out = run.output
    assert run.returncode == 0, out[-6000:]
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
