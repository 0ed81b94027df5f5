"""Scale: the job API and the sweep over 100,000 jobs (`--scale-jobs N` for another count), with
the rows each job leaves: images, transitions, published outbox rows and stored callbacks.

The API is driven through Flask's test client (the full app: auth, query, JSON), so the figures
are the server's own time per request without HTTP or load-client noise. The sweep's queries are
captured from real `worker.repair.sweep` runs, then EXPLAINed with their own parameters, so
the plan checked is the plan of the code as it is, not of a copy of its query. The seeded jobs
span `jobs * 20 s` (23 days at 100,000), so the sweep also prunes the outbox rows of the older
ones, within its bounded batches. Bytes per job are each table's `pg_total_relation_size`
(heap, indexes, TOAST) over the job count, measured before the sweep prunes anything.
"""

from __future__ import annotations

import gc
import random
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy import event, text

from bench import infra
from bench.context import Context
from bench.report import BenchResult, Figure, percentile
from bench.seed import seed_jobs
from models.db import make_engine
from webhook import create_app, gunicorn_conf
from worker.repair import sweep
from worker.services import Services

STATUSES = ["archived", "failed", "succeeded", "processing", "submitted", "queued"]
TABLES = ["jobs", "images", "transitions", "callback_events", "outbox", "notifications"]
DEFAULT_JOBS, SMOKE_JOBS = 100_000, 5_000


def _timed(client: Any, path: str, headers: dict[str, str]) -> tuple[float, Any]:
    start = time.perf_counter()
    resp = client.get(path, headers=headers)
    elapsed = time.perf_counter() - start
    if resp.status_code != 200:
        raise RuntimeError(f"GET {path} answered {resp.status_code}: {resp.get_data(as_text=True)[:200]}")
    return elapsed, resp.get_json()


def _captured(svc: Services, kinds: tuple[str, ...], run: Any) -> list[tuple[str, Any]]:
    """The statements starting with one of `kinds` that `run()` executes on `svc`'s engine."""
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(kinds):
            captured.append((statement, params))

    event.listen(svc.engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(svc.engine, "before_cursor_execute", capture)
    return captured


def _plans(svc: Services, statements: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    plans = []
    with svc.engine.connect() as conn:
        for statement, params in statements:
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
            plans.append((statement, "\n".join(r[0] for r in rows)))
        conn.rollback()
    return plans


def _table_growth(url: str, jobs: int) -> dict[str, dict[str, float]]:
    """Rows and bytes (heap, indexes, TOAST) per job of each table."""
    engine = make_engine(url)
    growth = {}
    try:
        with engine.connect() as conn:
            for table in TABLES:
                rows = conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0
                size = conn.scalar(text("SELECT pg_total_relation_size(:t)"), {"t": table}) or 0
                growth[table] = {"rows_per_job": rows / jobs, "bytes_per_job": size / jobs}
    finally:
        engine.dispose()
    return growth


def run(ctx: Context) -> BenchResult:
    jobs = ctx.scale_jobs or (SMOKE_JOBS if ctx.smoke else DEFAULT_JOBS)
    list_requests, get_requests = (60, 100) if ctx.smoke else (300, 1000)
    rng = random.Random(5)
    res = BenchResult("scale", 0.0)
    with infra.private_database() as url:
        seeded_at = time.monotonic()
        seeded = seed_jobs(url, jobs, history=True)
        seed_seconds = time.monotonic() - seeded_at
        growth = _table_growth(url, jobs)
        settings = infra.bench_settings(database_url=url)
        app = create_app(settings)
        # What the webhook's gunicorn workers do once the app is loaded (webhook/gunicorn_conf.py).
        gunicorn_conf.post_worker_init(worker=SimpleNamespace(wsgi=app))
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

        # No publisher: the sweep's queries and deletes run, its archive messages go nowhere.
        svc = Services(settings)
        try:
            selects = _captured(svc, ("SELECT",), lambda: sweep(svc, dry_run=True))
            sweep_seconds: list[float] = []
            reports: list[Any] = []

            def timed_sweep() -> None:
                start = time.perf_counter()
                reports.append(sweep(svc))
                sweep_seconds.append(time.perf_counter() - start)

            # The first runs prune (up to their batch budget each), until one finds nothing left.
            deletes = _captured(svc, ("DELETE",), timed_sweep)
            while reports[-1].pruned.outbox or reports[-1].pruned.callback_events:
                timed_sweep()
            plans = _plans(svc, selects)
            delete_plans = _plans(svc, list({statement: (statement, p) for statement, p in deletes}.values()))
        finally:
            svc.engine.dispose()
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
        Figure("scale", "sweep, first run (prunes)", sweep_seconds[0] * ms, "ms"),
        Figure("scale", "sweep, nothing left to prune", sweep_seconds[-1] * ms, "ms"),
        Figure(
            "scale",
            "prune deletes use an index",
            float(bool(delete_plans) and all("Index" in p and "Seq Scan" not in p for _, p in delete_plans)),
            "",
            None,
            "==",
            1.0,
        ),
        Figure("scale", "bytes per job, all tables", sum(g["bytes_per_job"] for g in growth.values()), "B"),
        *(Figure("scale", f"{table} bytes per job", g["bytes_per_job"], "B") for table, g in growth.items()),
    ]
    res.details = {
        "jobs": seeded.jobs,
        "images": seeded.images,
        "transitions": seeded.transitions,
        "seed_seconds": round(seed_seconds, 1),
        "growth_per_job": {t: {k: round(v, 3) for k, v in g.items()} for t, g in growth.items()},
        "sweep_seconds": [round(x, 3) for x in sweep_seconds],
        "pruned": [{"outbox": r.pruned.outbox, "callback_events": r.pruned.callback_events} for r in reports],
        "sweep_plans": [{"sql": s, "plan": p} for s, p in plans],
        "prune_plans": [{"sql": s, "plan": p} for s, p in delete_plans],
    }
    return res
