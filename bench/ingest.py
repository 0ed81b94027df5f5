"""Webhook ingest: callbacks/s and latency of the real receiver vs one INSERT per request.

Every job starts `submitted`, so each first callback is a real decision: two thirds `processing`
(applied), one third `succeed`, unsigned as with compose's defaults, so stored `unconfirmed` with a
`confirm_job` outbox row published to the broker (webhook/callbacks.py), plus 10% byte-identical
re-deliveries that must be answered 200 as duplicates.

Both servers run side by side and take turns, three rounds of fresh jobs each, alternating which
goes first; callbacks/s is each side's median round, latencies are over every round's answers.
"""

from __future__ import annotations

import json
import random
import statistics
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
ROUNDS = 3
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


def _pooled(rounds: list[LoadResult]) -> LoadResult:
    """Every answer of every round, for latency percentiles and status counts."""
    pooled = LoadResult()
    for result in rounds:
        pooled.latencies += result.latencies
        pooled.statuses.update(result.statuses)
        pooled.errors.update(result.errors)
        pooled.elapsed += result.elapsed
    return pooled


def _median_rate(rounds: list[LoadResult]) -> float:
    return statistics.median(result.rate for result in rounds)


def run(ctx: Context) -> BenchResult:
    jobs = 120 if ctx.smoke else 4000
    rounds = 1 if ctx.smoke else ROUNDS
    max_s = 15.0 if ctx.smoke else 60.0
    rng = random.Random(11)
    res = BenchResult("ingest", 0.0)
    with infra.private_database() as url:
        engine = make_engine(url)
        baseline_metadata.create_all(engine)
        total = 2 * WARMUP + rounds * jobs
        ids = seed_jobs(url, total, statuses={"submitted": 1.0}, keep_ids=total).job_ids_by_status[
            "submitted"
        ]
        warm_real, warm_base = ids[:WARMUP], ids[WARMUP : 2 * WARMUP]
        measured = ids[2 * WARMUP :]
        settings = infra.bench_settings(database_url=url)
        env = infra.settings_env(settings)
        infra.flush_redis()
        base: list[LoadResult] = []
        real: list[LoadResult] = []
        try:
            with (
                infra.gunicorn("bench.baseline_app:create_app()", env) as base_url,
                infra.gunicorn("webhook:create_app()", env) as real_url,
            ):
                run_load(base_url, build_requests(warm_base, rng), connections=CONNECTIONS, max_seconds=max_s)
                run_load(real_url, build_requests(warm_real, rng), connections=CONNECTIONS, max_seconds=max_s)
                for i in range(rounds):
                    # Rounds alternate which side goes first: this VM's speed drifts within minutes,
                    # and one long run per side would measure the drift as much as the service.
                    reqs = build_requests(measured[i * jobs : (i + 1) * jobs], rng)
                    pair = [(base, base_url), (real, real_url)]
                    for results, target in pair if i % 2 == 0 else reversed(pair):
                        results.append(run_load(target, reqs, connections=CONNECTIONS, max_seconds=max_s))
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
    real_all, base_all = _pooled(real), _pooled(base)
    bad = sum(n for code, n in real_all.statuses.items() if code != 200) + sum(real_all.errors.values())
    res.figures = [
        Figure(
            "ingest", "callbacks/s", _median_rate(real), "req/s", _median_rate(base), ">=", 0.5, on="ratio"
        ),
        Figure(
            "ingest",
            "p50 latency",
            percentile(real_all.latencies, 50) * ms,
            "ms",
            percentile(base_all.latencies, 50) * ms,
        ),
        Figure(
            "ingest",
            "p99 latency",
            percentile(real_all.latencies, 99) * ms,
            "ms",
            percentile(base_all.latencies, 99) * ms,
            "<=",
            50.0,
        ),
        Figure("ingest", "non-200 answers", float(bad), "", None, "==", 0.0),
    ]
    res.details = {
        "requests": rounds * len(reqs),
        "rounds": rounds,
        "rates": {"service": [round(r.rate) for r in real], "baseline": [round(r.rate) for r in base]},
        "answered": {"service": len(real_all.latencies), "baseline": len(base_all.latencies)},
        "statuses": {"service": dict(real_all.statuses), "baseline": dict(base_all.statuses)},
        "errors": {"service": dict(real_all.errors), "baseline": dict(base_all.errors)},
        "event_outcomes": outcomes,
        "connections": CONNECTIONS,
        "gunicorn": f"{infra.GUNICORN_WORKERS} x {infra.GUNICORN_CLASS}",
    }
    return res
