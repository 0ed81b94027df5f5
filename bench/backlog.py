"""A backlog: 20,000 jobs created through the API at once, drained through 10 slots.

The deployment is `utilisation`'s (simulator, gunicorn webhook with callbacks, one Celery worker
with two pool processes and beat, moto, PostgreSQL, Redis). Jobs are created by 8 client
connections as fast as the API takes them; the clock runs from the first create to the last
finish. While the backlog drains, a probe in this process times the limiter's `holders` call (the
read every slot release makes) and `GET /v1/jobs/{id}` for a random job, every 50 ms; CPU is read
from /proc per process group, Redis commands from INFO commandstats.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
import requests
from sqlalchemy import func, select

from bench import infra
from bench.context import Context
from bench.load import run_load
from bench.pipeline_bench import Deployment, deployment, provider_timeline
from bench.report import BenchResult, Figure, percentile
from models.db import session_scope
from models.tables import Job
from worker.limiter import RedisSlotLimiter

FINAL = ("archived", "failed")
CREATE_CONNECTIONS = 8
PROBE_EVERY_SECONDS = 0.05
PROGRESS_EVERY_SECONDS = 30.0


@dataclass
class Probe:
    """Samples taken while the backlog drains: (seconds, waiters in the limiter's queue) and GETs."""

    limiter: RedisSlotLimiter
    base_url: str
    headers: dict[str, str]
    ids: list[str] = field(default_factory=list)
    holders: list[tuple[float, int]] = field(default_factory=list)
    gets: list[float] = field(default_factory=list)
    get_errors: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(7)
        queue = redis.Redis.from_url(infra.REDIS_URL, socket_timeout=10)
        http = requests.Session()
        try:
            while not self.stop.wait(PROBE_EVERY_SECONDS):
                t0 = time.perf_counter()
                self.limiter.holders()
                took = time.perf_counter() - t0
                self.holders.append((took, int(queue.zcard(self.limiter.keys[2]))))
                if self.ids:
                    t0 = time.perf_counter()
                    resp = http.get(
                        f"{self.base_url}/v1/jobs/{rng.choice(self.ids)}", headers=self.headers, timeout=30
                    )
                    if resp.status_code == 200:
                        self.gets.append(time.perf_counter() - t0)
                    else:
                        self.get_errors[str(resp.status_code)] += 1
        finally:
            http.close()
            queue.close()


def redis_commands() -> int:
    """Commands the Redis server has run so far (every database, every client)."""
    client = redis.Redis.from_url(infra.REDIS_URL, socket_timeout=10)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for v in stats.values())


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def priority_of(i: int) -> str:
    """A mixed load: 10% high, 20% low, the rest normal, interleaved."""
    return "high" if i % 10 == 0 else "low" if i % 10 in (1, 2) else "normal"


def create_jobs(base_url: str, count: int) -> tuple[float, Counter[int]]:
    """POST /v1/jobs `count` times from CREATE_CONNECTIONS connections; (seconds, answers by status)."""
    bodies: list[tuple[str, str, bytes | None]] = [
        (
            "POST",
            "/v1/jobs",
            json.dumps(
                {"prompt": f"backlog {i}", "n": 1, "aspect_ratio": "1:1", "priority": priority_of(i)}
            ).encode(),
        )
        for i in range(count)
    ]
    headers = {"Authorization": f"Bearer {infra.API_TOKEN}"}
    result = run_load(base_url, bodies, connections=CREATE_CONNECTIONS, max_seconds=3600, headers=headers)
    return result.elapsed, result.statuses


def wait_drained(dep: Deployment, jobs: int, timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + PROGRESS_EVERY_SECONDS
    while True:
        with session_scope(dep.sessions) as s:
            counts = Counter(dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all()))
        done = sum(counts[status] for status in FINAL)
        if done >= jobs:
            return counts
        dep.worker.check()
        now = time.monotonic()
        if now > next_report:
            print(f"  backlog: {done}/{jobs} final, {dict(counts)}", flush=True)
            next_report = now + PROGRESS_EVERY_SECONDS
        if now > deadline:
            raise RuntimeError(
                f"{jobs - done} job(s) not final after {timeout} s: {dict(counts)}\n{dep.worker.log()}"
            )
        time.sleep(1.0)  # polling interval of a deadline loop


def run(ctx: Context) -> BenchResult:
    jobs, slots, task_seconds = (300, 10, 0.2) if ctx.smoke else (20_000, 10, 0.5)
    ideal = jobs * task_seconds / slots
    res = BenchResult("backlog", 0.0)
    with deployment(ctx, slots=slots, task_seconds=task_seconds) as dep:
        base_url = dep.settings.public_base_url
        assert base_url
        limiter = RedisSlotLimiter(
            dep.settings.limiter_redis_url,
            limit=slots,
            lease_seconds=dep.settings.slot_lease_seconds,
            key_prefix=dep.settings.limiter_key_prefix,
        )
        probe = Probe(limiter, base_url, {"Authorization": f"Bearer {infra.API_TOKEN}"})
        prober = threading.Thread(target=probe.run, name="backlog-probe", daemon=True)
        cpu0, commands0, busy0 = infra.cpu_by_process(), redis_commands(), machine_busy_seconds()
        start = time.time()
        prober.start()
        try:
            create_seconds, answers = create_jobs(base_url, jobs)
            with session_scope(dep.sessions) as s:
                probe.ids = list(s.scalars(select(Job.id)))
            counts = wait_drained(dep, jobs, timeout=ideal * 4 + 600)
        finally:
            probe.stop.set()
            prober.join(timeout=60)
        cpu1, commands1, busy1 = infra.cpu_by_process(), redis_commands(), machine_busy_seconds()
        with session_scope(dep.sessions) as s:
            last = s.scalar(select(func.max(Job.finished_at)))
            waits: dict[str, list[float]] = {}
            for priority, created, submitted in s.execute(
                select(Job.priority, Job.created_at, Job.submitted_at)
            ):
                if submitted is not None:
                    waits.setdefault(priority, []).append((submitted - created).total_seconds())
        stats = dep.sim.stats()
        timeline = provider_timeline(dep, slots)

        def cpu_ms(key: str) -> float:
            return (cpu1.get(key, 0.0) - cpu0.get(key, 0.0)) * 1000 / jobs

        worker_ms = cpu_ms(f"session:{dep.worker.pid}")
        web_ms = cpu_ms(f"session:{dep.web.pid}")
        postgres_ms = cpu_ms("postgres")
        redis_ms = cpu_ms("redis")
    assert isinstance(last, datetime)
    makespan = last.timestamp() - start
    peak = max((n for _, n in probe.holders), default=0)
    at_peak = [took for took, n in probe.holders if n >= peak / 2] if peak else []
    busy = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) if busy1[1] > busy0[1] else float("nan")
    ms = 1000.0
    get_p99, get_p50 = percentile(probe.gets, 99) * ms, percentile(probe.gets, 50) * ms
    res.figures = [
        Figure("backlog", "makespan", makespan, "s", ideal, note="baseline = ideal jobs*n*duration/slots"),
        Figure("backlog", "utilisation", ideal / makespan, "", None, ">=", 0.9),
        Figure("backlog", "provider utilisation", timeline.utilisation, "", note="busy / slots x span"),
        Figure("backlog", "jobs archived", float(counts["archived"]), "", float(jobs), "==", 1.0, on="ratio"),
        Figure("backlog", "creates/s (API, 8 connections)", jobs / create_seconds, "/s"),
        Figure("backlog", "peak wait queue", float(peak), "waiters"),
        Figure("backlog", "limiter holders() p99 at peak", percentile(at_peak, 99) * ms, "ms"),
        Figure("backlog", "GET /v1/jobs/{id} p99 while draining", get_p99, "ms", None, "<=", 10.0),
        Figure("backlog", "GET /v1/jobs/{id} p50 while draining", get_p50, "ms"),
        Figure("backlog", "worker CPU per job", worker_ms, "ms"),
        Figure("backlog", "webhook CPU per job", web_ms, "ms"),
        Figure("backlog", "PostgreSQL CPU per job", postgres_ms, "ms"),
        Figure("backlog", "Redis commands per job", (commands1 - commands0) / jobs, ""),
        Figure("backlog", "machine CPU busy", busy, "", note="fraction of all cores, whole run"),
        *(
            Figure("backlog", f"queue wait {pct} {priority}", percentile(waits.get(priority, []), q), "s")
            for priority in ("high", "normal", "low")
            for pct, q in (("p50", 50), ("p99", 99))
        ),
    ]
    res.details = {
        "jobs": jobs,
        "slots": slots,
        "task_seconds": task_seconds,
        "ideal_seconds": ideal,
        "create_seconds": round(create_seconds, 1),
        "create_answers": {str(k): v for k, v in answers.items()},
        "statuses": dict(counts),
        "redis_cpu_ms_per_job": round(redis_ms, 3),
        "get_samples": len(probe.gets),
        "get_errors": dict(probe.get_errors),
        "limiter_samples": len(probe.holders),
        "limiter_samples_at_peak": len(at_peak),
        "max_slots_in_use": stats.get("max_slots_in_use"),
        "create_count": stats.get("create_count"),
        "provider_timeline": {k: round(v, 3) for k, v in vars(timeline).items()},
    }
    return res
