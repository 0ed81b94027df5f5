"""The runner that keeps the long end-to-end runs beside the suite (tests/background.py)."""

from __future__ import annotations

import pytest

from tests.background import Background, Run, planned_runs


def test_a_run_reports_its_exit_status_and_output() -> None:
    bg = Background([Run("missing", ["kling_no_such_module"], timeout=60)])
    bg.start()
    run = bg.result("missing", timeout=60)
    assert run.returncode != 0
    assert "No module named kling_no_such_module" in run.output
    assert "missing" in bg.summary()


def test_a_run_past_its_time_limit_is_killed_and_says_so() -> None:
    bg = Background([Run("forever", ["http.server", "0", "--bind", "127.0.0.1"], timeout=1)])
    bg.start()
    run = bg.result("forever", timeout=60)
    assert run.returncode == -9
    assert "killed after 1 s" in run.output


def test_waiting_longer_than_allowed_raises() -> None:
    bg = Background([Run("forever", ["http.server", "0", "--bind", "127.0.0.1"], timeout=60)])
    bg.start()
    try:
        with pytest.raises(TimeoutError):
            bg.result("forever", timeout=0.2)
    finally:
        bg.stop()
    assert bg.result("forever", timeout=60).returncode == -9


def test_only_the_runs_asked_for_are_planned() -> None:
    assert planned_runs([]) == []
    (smoke,) = planned_runs(["bench-smoke"])
    assert smoke.argv[:2] == ["bench", "--smoke"]
    assert smoke.argv[-1] == str(smoke.workdir / "results.json")


def test_wait_all_returns_once_every_run_has_ended() -> None:
    bg = Background([Run("missing", ["kling_no_such_module"], timeout=60)])
    bg.start()
    bg.wait_all(timeout=60)
    assert all(run.done.is_set() for run in bg.runs.values())
