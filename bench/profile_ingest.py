"""Where a callback's time goes: `python -m bench.profile_ingest [N [LOAD_JOBS]]`.

First the CPU per request of each process while the ingest benchmark's load runs through both
servers (gunicorn, same settings), one after the other: the load client, the server's gunicorn
processes, PostgreSQL and Redis. The machine is saturated, so this CPU is what sets callbacks/s.
Then the CPU of each kind of callback (N `processing`, the same N again as re-deliveries, N
`succeed`), in this process and in PostgreSQL's (local) processes, with the baseline's one INSERT
for comparison. Then N callbacks of the ingest benchmark's mix through the real app in-process:
SQL statements per callback (the pool's ping is not counted) and cProfile's top functions.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import random
import sys
import time
from typing import Any

from sqlalchemy import event

from bench import infra
from bench.baseline_app import create_app as baseline_app
from bench.baseline_app import metadata as baseline_metadata
from bench.ingest import CONNECTIONS, WARMUP, build_requests, callback_body
from bench.load import run_load
from bench.seed import seed_jobs
from models.db import make_engine
from models.tokens import callback_token
from webhook import create_app
from webhook.db import sessions


def _postgres_cpu() -> float:
    """CPU seconds used so far by this host's PostgreSQL processes (server and backends)."""
    return infra.cpu_by_process()["postgres"]


def _submitted_jobs_and_baseline_table(url: str, count: int) -> list[str]:
    """`count` jobs seeded in `submitted`, and the baseline's table, in the database at `url`."""
    ids = seed_jobs(url, count, statuses={"submitted": 1.0}, keep_ids=count)
    engine = make_engine(url)
    baseline_metadata.create_all(engine)
    engine.dispose()
    return ids.job_ids_by_status["submitted"]


def cpu_under_load(url: str, jobs: int) -> None:
    """One round of `jobs` callbacks (the ingest mix) through each server, its CPU split by process."""
    job_ids = _submitted_jobs_and_baseline_table(url, 2 * WARMUP + 2 * jobs)
    warm_base, warm_real, measured = job_ids[:WARMUP], job_ids[WARMUP : 2 * WARMUP], job_ids[2 * WARMUP :]
    env = infra.settings_env(infra.bench_settings(database_url=url))
    rng = random.Random(5)
    infra.flush_redis()
    print(f"{'CPU per request under load, ms':30s}  client  server      PG   Redis   total   req/s")
    with (
        infra.gunicorn_proc("bench.baseline_app:create_app()", env) as (base_url, base_proc),
        infra.gunicorn_proc("webhook:create_app()", env) as (real_url, real_proc),
    ):
        run_load(base_url, build_requests(warm_base, rng), connections=CONNECTIONS)
        run_load(real_url, build_requests(warm_real, rng), connections=CONNECTIONS)
        for name, target, proc, chunk in (
            ("baseline (one INSERT)", base_url, base_proc, measured[:jobs]),
            ("service", real_url, real_proc, measured[jobs:]),
        ):
            requests = build_requests(chunk, rng)
            before, client_start = infra.cpu_by_process(), time.process_time()
            result = run_load(target, requests, connections=CONNECTIONS)
            after, client = infra.cpu_by_process(), time.process_time() - client_start
            per = 1000 / len(result.latencies)
            server = f"session:{proc.pid}"
            row = [client * per, *((after[key] - before[key]) * per for key in (server, "postgres", "redis"))]
            cells = "".join(f"{value:8.2f}" for value in row)
            print(f"{name:30s}{cells}{sum(row):8.2f}{result.rate:8.0f}")
    infra.flush_redis()


def cpu_per_kind(url: str, count: int) -> None:
    job_ids = _submitted_jobs_and_baseline_table(url, 2 * count + 40)
    warm, first, second = job_ids[:40], job_ids[40 : 40 + count], job_ids[40 + count :]
    os.environ["DATABASE_URL"] = url
    service = create_app(infra.bench_settings(database_url=url)).test_client()
    baseline = baseline_app().test_client()

    def run(client: Any, jobs: list[str], status: str) -> tuple[float, float]:
        bodies = [
            (
                f"/callbacks/kling/{job}/{callback_token(infra.CALLBACK_SECRET, job)}",
                callback_body(job, status),
            )
            for job in jobs
        ]
        cpu, pg = time.process_time(), _postgres_cpu()
        for path, body in bodies:
            resp = client.post(path, data=body, content_type="application/json")
            assert resp.status_code == 200, resp.get_data(as_text=True)
        return (time.process_time() - cpu) * 1000 / len(jobs), (_postgres_cpu() - pg) * 1000 / len(jobs)

    run(service, warm[:20], "processing")
    run(service, warm[20:], "succeed")
    run(baseline, warm, "processing")
    print("CPU per callback, ms       this process   PostgreSQL")
    for name, client, jobs, status in (
        ("baseline (one INSERT)", baseline, first, "processing"),
        ("processing", service, first, "processing"),
        ("re-delivery", service, first, "processing"),
        ("succeed", service, second, "succeed"),
    ):
        python, postgres = run(client, jobs, status)
        print(f"{name:26s} {python:13.2f} {postgres:12.2f}")
    infra.flush_redis()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    load_jobs = int(sys.argv[2]) if len(sys.argv) > 2 else 4000  # one ingest round's worth
    with infra.private_database() as url:
        cpu_under_load(url, load_jobs)
    with infra.private_database() as url:
        cpu_per_kind(url, count)
    with infra.private_database() as url:
        ids = seed_jobs(url, count, statuses={"submitted": 1.0}, keep_ids=count).job_ids_by_status[
            "submitted"
        ]
        reqs = build_requests(ids, random.Random(3))
        app = create_app(infra.bench_settings(database_url=url))
        client = app.test_client()
        with app.app_context():
            engine = sessions().kw["bind"]
        statements: list[str] = []

        def on_sql(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            statements.append(statement.split(None, 1)[0].upper())

        event.listen(engine, "before_cursor_execute", on_sql)
        infra.flush_redis()
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for _, path, body in reqs:
            resp = client.post(path, data=body, content_type="application/json")
            assert resp.status_code == 200, resp.get_data(as_text=True)
        profiler.disable()
        elapsed = time.perf_counter() - start
        infra.flush_redis()
        engine.dispose()
    n = len(reqs)
    kinds: dict[str, int] = {}
    for s in statements:
        kinds[s] = kinds.get(s, 0) + 1
    print(
        f"{n} callbacks in {elapsed:.2f} s = {n / elapsed:.0f}/s on one thread, "
        f"{1000 * elapsed / n:.2f} ms each"
    )
    print(f"SQL statements per callback: {len(statements) / n:.1f} {sorted(kinds.items())}")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(60)


if __name__ == "__main__":
    main()
