"""Webhook ingest: callbacks/s and latency of the real receiver vs one INSERT per request.

Every job starts `submitted`, so each first callback is a real applied transition: two thirds
`processing`, one third `succeed` (images rows, archive + release outbox rows published to the
broker), plus 10% byte-identical re-deliveries that must be answered 200 as duplicates.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from sqlalchemy import func, select

from bench import infra
from bench.baseline_app import metadata as baseline_metadata
from bench.context import Context
from bench.load import LoadResult, run_load
from bench.report import BenchResult, Figure, percentile
from bench.seed import seed_jobs
from models.db import make_engine
from models.tables import CallbackEvent
from models.tokens import callback_token

CONNECTIONS = 16
DUPLICATE_SHARE = 0.10
WARMUP = 64


def callback_body(job_id: str, status: str) -> bytes:
    now_ms = int(time.time() * 1000)
    result: dict[str, Any] = {}
    if status == "succeed":
        url = f"http://127.0.0.1:9/images/task-{job_id}/0.png"
        result = {"images": [{"index": 0, "url": url, "watermark_url": url}]}
    body: dict[str, Any] = {
        "task_id": f"task-{job_id}",
        "task_status": status,
        "task_status_msg": "",
        "task_info": {"external_task_id": job_id},
        "created_at": now_ms,
        "updated_at": now_ms,
        "task_result": result,
    }
    if status == "succeed":
        body["final_unit_deduction"] = "1"
    return json.dumps(body).encode()


def build_requests(job_ids: list[str], rng: random.Random) -> list[tuple[str, str, bytes | None]]:
    reqs: list[tuple[str, str, bytes | None]] = []
    for i, job_id in enumerate(job_ids):
        status = "succeed" if i % 3 == 2 else "processing"
        path = f"/callbacks/kling/{job_id}/{callback_token(infra.CALLBACK_SECRET, job_id)}"
        reqs.append(("POST", path, callback_body(job_id, status)))
    reqs += rng.sample(reqs, int(len(reqs) * DUPLICATE_SHARE))
    rng.shuffle(reqs)
    return reqs


def _measure(app: str, env: dict[str, str], warm: list[Any], reqs: list[Any], max_s: float) -> LoadResult:
    with infra.gunicorn(app, env) as base:
        run_load(base, warm, connections=CONNECTIONS, max_seconds=max_s)
        return run_load(base, reqs, connections=CONNECTIONS, max_seconds=max_s)


def run(ctx: Context) -> BenchResult:
    jobs = 120 if ctx.smoke else 4000
    max_seconds = 15.0 if ctx.smoke else 60.0
    rng = random.Random(11)
    res = BenchResult("ingest", 0.0)
    with infra.private_database() as url:
        engine = make_engine(url)
        baseline_metadata.create_all(engine)
        seeded = seed_jobs(url, jobs + 2 * WARMUP, statuses={"submitted": 1.0}, keep_ids=jobs + 2 * WARMUP)
        ids = seeded.job_ids_by_status["submitted"]
        warm_real, warm_base, measured = ids[:WARMUP], ids[WARMUP : 2 * WARMUP], ids[2 * WARMUP :]
        reqs = build_requests(measured, rng)
        settings = infra.bench_settings(database_url=url)
        env = infra.settings_env(settings)
        infra.flush_redis()
        try:
            base = _measure(
                "bench.baseline_app:create_app()", env, build_requests(warm_base, rng), reqs, max_seconds
            )
            real = _measure("webhook:create_app()", env, build_requests(warm_real, rng), reqs, max_seconds)
        finally:
            infra.flush_redis()
        with engine.connect() as conn:
            outcomes = dict(
                conn.execute(
                    select(CallbackEvent.outcome, func.count())
                    .where(CallbackEvent.job_id.in_(measured))
                    .group_by(CallbackEvent.outcome)
                ).all()
            )
        engine.dispose()

    ms = 1000.0
    bad = sum(n for code, n in real.statuses.items() if code != 200) + sum(real.errors.values())
    res.figures = [
        Figure("ingest", "callbacks/s", real.rate, "req/s", base.rate, ">=", 0.5, on="ratio"),
        Figure(
            "ingest",
            "p50 latency",
            percentile(real.latencies, 50) * ms,
            "ms",
            percentile(base.latencies, 50) * ms,
        ),
        Figure(
            "ingest",
            "p99 latency",
            percentile(real.latencies, 99) * ms,
            "ms",
            percentile(base.latencies, 99) * ms,
            "<=",
            50.0,
        ),
        Figure("ingest", "non-200 answers", float(bad), "", None, "==", 0.0),
    ]
    res.details = {
        "requests": len(reqs),
        "answered": {"service": len(real.latencies), "baseline": len(base.latencies)},
        "statuses": {"service": dict(real.statuses), "baseline": dict(base.statuses)},
        "errors": {"service": dict(real.errors), "baseline": dict(base.errors)},
        "event_outcomes": outcomes,
        "connections": CONNECTIONS,
        "gunicorn": f"{infra.GUNICORN_WORKERS} x {infra.GUNICORN_CLASS}",
    }
    return res
