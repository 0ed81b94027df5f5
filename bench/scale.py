"""Scale: the job API and the retention sweep over 100,000 jobs (images and transitions included).

The API is driven through Flask's test client (the full app: auth, query, JSON), so the figures
are the server's own time per request without HTTP or load-client noise. The sweep's queries are
captured from a real `worker.repair.sweep` run, then EXPLAINed with their own parameters, so
the plan checked is the plan of the code as it is, not of a copy of its query.
"""

from __future__ import annotations

import gc
import random
import time
from typing import Any

from sqlalchemy import event

from bench import infra
from bench.context import Context
from bench.report import BenchResult, Figure, percentile
from bench.seed import seed_jobs
from webhook import create_app, gunicorn_conf
from worker.repair import sweep
from worker.services import Services

STATUSES = ["archived", "failed", "succeeded", "processing", "submitted", "queued"]


def _timed(client: Any, path: str, headers: dict[str, str]) -> tuple[float, Any]:
    start = time.perf_counter()
    resp = client.get(path, headers=headers)
    elapsed = time.perf_counter() - start
    if resp.status_code != 200:
        raise RuntimeError(f"GET {path} answered {resp.status_code}: {resp.get_data(as_text=True)[:200]}")
    return elapsed, resp.get_json()


def _sweep_plans(settings: Any) -> list[tuple[str, str]]:
    svc = Services(settings)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, params))

    event.listen(svc.engine, "before_cursor_execute", capture)
    sweep(svc, dry_run=True)
    event.remove(svc.engine, "before_cursor_execute", capture)
    plans = []
    with svc.engine.connect() as conn:
        for statement, params in captured:
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
            plans.append((statement, "\n".join(r[0] for r in rows)))
    svc.engine.dispose()
    return plans


def run(ctx: Context) -> BenchResult:
    jobs = 5_000 if ctx.smoke else 100_000
    list_requests, get_requests = (60, 100) if ctx.smoke else (300, 1000)
    rng = random.Random(5)
    res = BenchResult("scale", 0.0)
    with infra.private_database() as url:
        seeded_at = time.monotonic()
        seeded = seed_jobs(url, jobs)
        seed_seconds = time.monotonic() - seeded_at
        settings = infra.bench_settings(database_url=url)
        app = create_app(settings)
        # What the webhook's gunicorn workers do once the app is loaded (webhook/gunicorn_conf.py).
        gunicorn_conf.post_worker_init(worker=None)
        headers = {"Authorization": f"Bearer {infra.API_TOKEN}"}
        client = app.test_client()
        ids = [j for s in STATUSES for j in seeded.job_ids_by_status.get(s, [])]

        cursors: dict[str, str | None] = dict.fromkeys(STATUSES)
        list_times: list[float] = []
        for i in range(list_requests + 20):
            status = STATUSES[i % len(STATUSES)]
            path = f"/v1/jobs?status={status}&limit=50"
            # Every other request pages on: deeper pages exercise the (created_at, id) cursor.
            if cursors[status] and i % 2:
                path += f"&cursor={cursors[status]}"
            elapsed, body = _timed(client, path, headers)
            cursors[status] = body["next_cursor"]
            if i >= 20:  # the first requests warm the pool and the caches
                list_times.append(elapsed)

        get_times: list[float] = []
        for i in range(get_requests + 20):
            elapsed, _ = _timed(client, f"/v1/jobs/{rng.choice(ids)}", headers)
            if i >= 20:
                get_times.append(elapsed)

        plans = _sweep_plans(settings)
        gc.unfreeze()
    main_plan = next((p for s, p in plans if "GROUP BY" in s.upper()), "")
    ms = 1000.0
    res.figures = [
        Figure(
            "scale",
            "GET /v1/jobs?status&limit=50 p99",
            percentile(list_times, 99) * ms,
            "ms",
            None,
            "<=",
            25.0,
        ),
        Figure("scale", "GET /v1/jobs?status&limit=50 p50", percentile(list_times, 50) * ms, "ms"),
        Figure("scale", "GET /v1/jobs/{id} p99", percentile(get_times, 99) * ms, "ms", None, "<=", 10.0),
        Figure("scale", "GET /v1/jobs/{id} p50", percentile(get_times, 50) * ms, "ms"),
        Figure("scale", "sweep query uses an index", float("Index" in main_plan), "", None, "==", 1.0),
    ]
    res.details = {
        "jobs": seeded.jobs,
        "images": seeded.images,
        "transitions": seeded.transitions,
        "seed_seconds": round(seed_seconds, 1),
        "sweep_plans": [{"sql": s, "plan": p} for s, p in plans],
    }
    return res
