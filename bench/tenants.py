"""Tenants sharing 10 slots: do freed slots go by weight, whatever the order jobs arrived in?

The deployment is `utilisation`'s (simulator, gunicorn webhook with callbacks, one Celery worker
and beat, moto, PostgreSQL, Redis). Three tenants, each through its own API key: `light`
(weight 1) queues all its jobs first, then `heavy` (weight 3), then `capped` (weight 1,
`--max-slots 1`). While all three have jobs waiting, the water-filled shares of 10 slots are
capped 1, light 2.25, heavy 6.75. Each tenant's share is measured as its slot-seconds (a job's
`n` from its submit to its end, from the database) over the window from the last create to the
first time a tenant's queue ran dry.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime

from sqlalchemy import select

from bench.backlog import wait_drained
from bench.context import Context
from bench.load import run_load
from bench.pipeline_bench import deployment
from bench.report import BenchResult, Figure
from models.db import session_scope
from models.tables import Job
from models.tenants import Limits, create_tenant
from worker.tenant_share import shares

TENANTS = {"light": Limits(weight=1), "heavy": Limits(weight=3), "capped": Limits(weight=1, max_slots=1)}
ARRIVAL = ("light", "heavy", "capped")  # the order each tenant's jobs are created in
# Jobs per tenant, in quarters of `per_tenant`: capped runs one at a time, so it gets fewer (it
# still has some queued when the others' queues run dry).
JOBS = {"light": 4, "heavy": 4, "capped": 1}


def create_as(base_url: str, key: str, tenant: str, count: int) -> Counter[int]:
    bodies: list[tuple[str, str, bytes | None]] = [
        ("POST", "/v1/jobs", json.dumps({"prompt": f"{tenant} {i}", "n": 1}).encode()) for i in range(count)
    ]
    result = run_load(
        base_url, bodies, connections=4, max_seconds=600, headers={"Authorization": f"Bearer {key}"}
    )
    return result.statuses


def held_at_most(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at once."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def run(ctx: Context) -> BenchResult:
    per_tenant, slots, task_seconds = (40, 10, 1.0) if ctx.smoke else (200, 10, 1.0)
    res = BenchResult("tenants", 0.0)
    with deployment(ctx, slots=slots, task_seconds=task_seconds) as dep:
        base_url = dep.settings.public_base_url
        assert base_url
        with session_scope(dep.sessions) as s:
            keys = {
                name: create_tenant(s, name, weight=lim.weight, max_slots=lim.max_slots)[1]
                for name, lim in TENANTS.items()
            }
        # The worker re-reads the tenants table every 5 s (worker/tenancy.py): a benchmark, not a
        # test, so a fixed wait is fine here.
        time.sleep(6)
        start = time.time()
        answers: Counter[int] = Counter()
        for tenant in ARRIVAL:
            answers += create_as(base_url, keys[tenant], tenant, JOBS[tenant] * per_tenant // 4)
        created = time.time()
        total_jobs = sum(JOBS.values()) * per_tenant // 4
        counts = wait_drained(dep, total_jobs, timeout=600)
        with session_scope(dep.sessions) as s:
            rows = s.execute(select(Job.tenant, Job.submitted_at, Job.provider_seconds)).all()
    # A job holds its slot from its create to the provider's end (not while it is archived).
    spans: dict[str, list[tuple[float, float]]] = {t: [] for t in TENANTS}
    for row in rows:
        if isinstance(row.submitted_at, datetime) and row.provider_seconds is not None:
            begin = row.submitted_at.timestamp()
            spans[row.tenant].append((begin, begin + row.provider_seconds))
    # All three wait from the last create until one of them has no job left to start.
    window = (created, min(max(s for s, _ in spans[t]) for t in TENANTS))
    used = {
        t: sum(max(0.0, min(end, window[1]) - max(begin, window[0])) for begin, end in spans[t])
        for t in TENANTS
    }
    total = sum(used.values()) or float("nan")
    expected = shares(slots, TENANTS, frozenset(TENANTS))
    last = max(end for t in TENANTS for _, end in spans[t])
    res.figures = [
        *(
            Figure(
                "tenants",
                f"share of slots, {t}",
                used[t] / total,
                "",
                expected[t] / slots,
                ">=",
                0.8,
                on="ratio",
                note="baseline = its fair share",
            )
            for t in TENANTS
        ),
        Figure(
            "tenants",
            "most slots held by capped (max_slots 1)",
            float(held_at_most(spans["capped"])),
            "",
            None,
            "<=",
            1.0,
        ),
        Figure("tenants", "window with all three waiting", window[1] - window[0], "s"),
        Figure(
            "tenants",
            "slot utilisation while all wait",
            sum(used.values()) / (slots * (window[1] - window[0])),
            "",
            note="fairness must not idle slots",
        ),
        Figure("tenants", "makespan", last - start, "s", total_jobs * task_seconds / slots),
        Figure(
            "tenants",
            "jobs archived",
            float(counts["archived"]),
            "",
            float(total_jobs),
            "==",
            1.0,
            on="ratio",
        ),
    ]
    res.details = {
        "per_tenant": per_tenant,
        "slots": slots,
        "task_seconds": task_seconds,
        "create_answers": {str(k): v for k, v in answers.items()},
        "expected_shares": {t: round(v, 2) for t, v in expected.items()},
        "slot_seconds_in_window": {t: round(v, 1) for t, v in used.items()},
        "statuses": dict(counts),
    }
    return res
