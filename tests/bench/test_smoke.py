"""`python -m bench --smoke` runs every benchmark end to end, so `make bench` cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.background import Background

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BENCHES = {"ingest", "utilisation", "archive", "latency", "scale", "backlog", "tenants"}


def _run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m <argv>` from the repository root; fails the test unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.background("bench-smoke")
@pytest.mark.timeout(1200)
def test_smoke_run_writes_valid_results(background: Background) -> None:
    # Started when collection ended, after the chaos run (tests/background.py).
    run = background.result("bench-smoke", timeout=1150)
    assert run.returncode == 0, run.output[-8000:]
    doc = json.loads((run.workdir / "results.json").read_text())
    assert doc["smoke"] is True
    assert doc["machine"]["nproc"] >= 1
    by_name = {b["name"]: b for b in doc["benchmarks"]}
    assert set(by_name) == BENCHES
    for name, bench in by_name.items():
        assert bench["error"] is None, (name, bench["error"])
        assert bench["figures"], name
        for fig in bench["figures"]:
            assert isinstance(fig["value"], float | int), (name, fig)
            assert fig["value"] == fig["value"], (name, fig["name"], "NaN: nothing was measured")
    # Each benchmark measured real work, not an empty run.
    ingest = {f["name"]: f for f in by_name["ingest"]["figures"]}
    assert ingest["callbacks/s"]["value"] > 0 and ingest["callbacks/s"]["baseline"] > 0
    assert ingest["non-200 answers"]["passed"] is True
    # 80 `processing` applied; 40 unsigned `succeed` stored `unconfirmed` for a provider lookup.
    assert by_name["ingest"]["details"]["event_outcomes"] == {"applied": 80, "unconfirmed": 40}
    util = {f["name"]: f for f in by_name["utilisation"]["figures"]}
    for lost in ("0%", "30%", "100%"):
        assert util[f"jobs archived, {lost} callbacks lost"]["passed"] is True, by_name["utilisation"][
            "details"
        ]
    # With every callback lost, the jobs finished because they were polled.
    assert util["polls per job, 100% callbacks lost"]["value"] > 0
    latency = {f["name"]: f for f in by_name["latency"]["figures"]}
    assert latency["jobs measured"]["passed"] is True, by_name["latency"]["details"]
    assert {f["name"]: f for f in by_name["scale"]["figures"]}["sweep query uses an index"]["passed"] is True
    backlog = {f["name"]: f for f in by_name["backlog"]["figures"]}
    assert backlog["jobs archived"]["passed"] is True, by_name["backlog"]["details"]
    assert backlog["peak wait queue"]["value"] > 0  # the limiter really held a queue
    assert backlog["worker CPU per job"]["value"] > 0
    # A mixed-priority load: every priority's queue wait is measured.
    for priority in ("high", "normal", "low"):
        assert backlog[f"queue wait p99 {priority}"]["value"] >= 0
    assert backlog["GET /v1/jobs/{id} p99 while draining"]["value"] > 0
    archive = {f["name"]: f for f in by_name["archive"]["figures"]}
    assert archive["throughput 10 MB"]["value"] > 0 and archive["throughput 10 MB"]["baseline"] > 0
    assert archive["throughput video 10 MB"]["value"] > 0  # the video path, held to the memory bound
    assert archive["peak RSS growth video 10 MB"]["op"] == "<="
    # The table is printed with every benchmark in it.
    for name in BENCHES:
        assert name in run.output


def test_profile_ingest_reports_cpu_per_process_and_per_kind() -> None:
    # 600 jobs: enough requests that even the baseline's PostgreSQL CPU spans several clock ticks (10 ms).
    proc = _run_module("bench.profile_ingest", "20", "600")
    rows: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():  # the first table; the per-kind table repeats a name
        rows.setdefault(line[:30].strip(), line[30:].split())
    for name in ("baseline (one INSERT)", "service"):
        client, server, postgres, _redis, total, rate = map(float, rows[name])
        assert client > 0 and server > 0 and postgres > 0 and rate > 0, (name, rows[name])
        # Each figure is rounded to 0.01 on its own: the printed parts may add up to 0.02 more than the total.
        assert total >= client + server + postgres - 0.02, (name, rows[name])
    assert "SQL statements per callback" in proc.stdout
    assert "apply_callback" in proc.stdout  # cProfile's table reached the state machine
