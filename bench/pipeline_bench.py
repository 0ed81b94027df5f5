"""The whole deployment under load: provider slot utilisation, and the latency archiving adds.

Processes: the simulator (`klingctl simulator`), the real webhook under gunicorn (callbacks on),
one `celery -A worker worker --concurrency=2 -B` (two prefork processes plus the embedded beat),
moto S3, PostgreSQL (a private database) and Redis db 11 (broker and limiter).
"""

from __future__ import annotations

import base64
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from bench import infra
from bench.context import Context
from bench.report import BenchResult, Figure, percentile
from bench.slot_timeline import SlotTimeline, TaskSpan, slot_timeline
from kling.simulator.remote import SimulatorRemote
from models.db import make_engine, make_sessionmaker, session_scope
from models.settings import Settings
from models.statemachine import create_job
from models.tables import Image, Job, Transition
from worker.factory import make_celery
from worker.outbox import relay
from worker.tasks import TASK_NAMES

WORKER_CONCURRENCY = 2
FINAL = ("archived", "failed")


@dataclass
class Deployment:
    settings: Settings
    sim: SimulatorRemote
    sessions: Any
    celery: Any
    worker: infra.Proc
    web: infra.Proc

    def submit(self, count: int, prefix: str, ns: list[int] | None = None) -> list[str]:
        """Create `count` jobs (`ns[i]` images each, 1 by default) and publish their submits."""
        with session_scope(self.sessions) as s:
            ids = [
                create_job(
                    s,
                    {"prompt": f"{prefix} {i}", "n": ns[i] if ns else 1, "aspect_ratio": "1:1"},
                    provider="kling",
                ).job.id
                for i in range(count)
            ]
        relay(self.sessions, lambda name, args: self.celery.send_task(TASK_NAMES[name], args=args))
        return ids

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            with session_scope(self.sessions) as s:
                rows = dict(s.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())
            if all(rows.get(j) in FINAL for j in ids):
                return rows
            self.worker.check()
            if time.monotonic() > deadline:
                left = sum(1 for j in ids if rows.get(j) not in FINAL)
                raise RuntimeError(f"{left} job(s) not final after {timeout} s\n{self.worker.log()}")
            time.sleep(0.1)  # polling interval of a deadline loop

    def wait_succeed_deliveries(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The simulator's delivery records, once `count` succeed callbacks have an outcome."""
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self.sim.deliveries()
            if sum(1 for d in deliveries if d["task_status"] == "succeed") >= count:
                return deliveries
            if time.monotonic() > deadline:
                return deliveries  # the figure "jobs measured" shows what is missing
            time.sleep(0.05)  # polling interval of a deadline loop


def wait_worker_ready(celery: Any, worker: infra.Proc, timeout: float = 120.0) -> None:
    """Measuring before the worker consumes would charge its start-up to the figures."""
    deadline = time.monotonic() + timeout
    while not celery.control.ping(timeout=1.0):
        worker.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"celery worker not answering ping after {timeout} s\n{worker.log()}")


@contextmanager
def deployment(
    ctx: Context, *, slots: int, task_seconds: float, signed: bool = False, **sim_knobs: Any
) -> Iterator[Deployment]:
    """`signed`: the simulator signs its callbacks and the webhook requires it (KLING_WEBHOOK_SECRET);
    otherwise final callbacks are confirmed by a lookup first (webhook/callbacks.py)."""
    infra.flush_redis()
    secret = f"whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}" if signed else None
    if secret is not None:
        sim_knobs = {**sim_knobs, "webhook_secret": secret}
    with (
        infra.private_database() as url,
        infra.simulator(concurrency=slots, task_seconds=task_seconds, **sim_knobs) as sim_url,
    ):
        bucket = infra.new_bucket(ctx.s3_endpoint)
        probe = infra.bench_settings(
            database_url=url,
            kling_api_base=sim_url,
            kling_concurrency=slots,
            s3_bucket=bucket,
            s3_endpoint_url=ctx.s3_endpoint,
            kling_webhook_secret=secret,
        )
        with infra.gunicorn_proc("webhook:create_app()", infra.settings_env(probe)) as (public, web):
            settings = Settings(**{**probe.model_dump(), "public_base_url": public})
            engine = make_engine(url)
            with infra.celery_worker(infra.settings_env(settings), concurrency=WORKER_CONCURRENCY) as worker:
                celery = make_celery(settings)
                wait_worker_ready(celery, worker)
                sim = SimulatorRemote(sim_url)
                try:
                    yield Deployment(settings, sim, make_sessionmaker(engine), celery, worker, web)
                finally:
                    sim.close()
                    engine.dispose()
                    infra.flush_redis()


# Share of callbacks the simulator drops, and the utilisation each run must reach.
UTILISATION_RUNS = ((0.0, 0.9), (0.3, 0.9), (1.0, 0.85))


def run_utilisation(ctx: Context) -> BenchResult:
    """Mixed n (1-4), 10 slots, 2 s tasks, with 0%, 30% and 100% of the callbacks lost."""
    jobs, slots, task_seconds = (10, 10, 0.5) if ctx.smoke else (200, 10, 2.0)
    rng = random.Random(11)
    ns = [rng.randint(1, 4) for _ in range(jobs)]
    ideal = sum(ns) * task_seconds / slots
    res = BenchResult("utilisation", 0.0)
    details: dict[str, Any] = {
        "jobs": jobs,
        "images": sum(ns),
        "slots": slots,
        "task_seconds": task_seconds,
        "ideal_seconds": ideal,
        "worker": f"one celery worker, --concurrency={WORKER_CONCURRENCY} (prefork) + embedded beat",
    }
    for drop, target in UTILISATION_RUNS:
        label = f"{drop:.0%} callbacks lost"
        with deployment(ctx, slots=slots, task_seconds=task_seconds, callback_drop_rate=drop) as dep:
            start = time.time()
            ids = dep.submit(jobs, "utilisation", ns)
            statuses = dep.wait_final(ids, timeout=ideal * 4 + 120)
            with session_scope(dep.sessions) as s:
                last = s.scalar(select(func.max(Job.finished_at)).where(Job.id.in_(ids)))
                failed = dict(
                    s.execute(
                        select(Job.error_code, func.count())
                        .where(Job.id.in_(ids), Job.status == "failed")
                        .group_by(Job.error_code)
                    ).all()
                )
            stats = dep.sim.stats()
            timeline = provider_timeline(dep, slots)
        assert isinstance(last, datetime)
        makespan = last.timestamp() - start
        archived = sum(1 for v in statuses.values() if v == "archived")
        polls = int(stats["query_count"]) + int(stats["list_count"])
        res.figures += [
            Figure("utilisation", f"makespan, {label}", makespan, "s", ideal, note="baseline = ideal"),
            Figure("utilisation", f"utilisation, {label}", ideal / makespan, "", None, ">=", target),
            Figure(
                "utilisation",
                f"provider utilisation, {label}",
                timeline.utilisation,
                "",
                note="busy slot-s / (slots x first create to last end)",
            ),
            Figure(
                "utilisation",
                f"task end known after (mean), {label}",
                timeline.known_after_mean * 1000,
                "ms",
                note=f"p50 {timeline.known_after_p50:.3f} s, p90 {timeline.known_after_p90:.3f} s",
            ),
            Figure("utilisation", f"polls per job, {label}", polls / jobs, ""),
            Figure("utilisation", f"1302 answers, {label}", float(stats["count_by_code"].get("1302", 0))),
            Figure(
                "utilisation",
                f"jobs archived, {label}",
                float(archived),
                "",
                float(jobs),
                "==",
                1.0,
                on="ratio",
            ),
        ]
        details[label] = {
            "1302 answers": int(stats["count_by_code"].get("1302", 0)),
            "1303 answers": int(stats["count_by_code"].get("1303", 0)),
            "lookups": int(stats["query_count"]),
            "list pages": int(stats["list_count"]),
            "max_slots_in_use": stats.get("max_slots_in_use"),
            "create_count": stats.get("create_count"),
            "failed_by_code": failed,
            "provider_timeline": {k: round(v, 3) for k, v in vars(timeline).items()},
        }
    res.details = details
    return res


def provider_timeline(dep: Deployment, slots: int) -> SlotTimeline:
    """The provider's busy and idle slot-seconds, the idle ones split by what they waited for
    (bench/slot_timeline.py); a task's end is known when its job's final transition committed."""
    tasks = [
        TaskSpan(t["task_id"], int(t["slots"]), t["created_at"] / 1000, t["history"][-1]["at"] / 1000)
        for t in dep.sim.tasks()
        if t["status"] in ("succeed", "failed")
    ]
    with session_scope(dep.sessions) as s:
        rows = s.execute(
            select(Job.provider_task_id, func.min(Transition.at))
            .join(Transition, Transition.job_id == Job.id)
            .where(Transition.to_status.in_(("succeeded", "failed")), Job.provider_task_id.is_not(None))
            .group_by(Job.provider_task_id)
        ).all()
    known = {str(task_id): at.timestamp() for task_id, at in rows if isinstance(at, datetime)}
    return slot_timeline(tasks, slots, known)


def _latency_samples(ctx: Context, jobs: int, *, signed: bool) -> tuple[list[float], dict[str, Any]]:
    """Seconds from each `succeed` callback's POST start to its image archived, and details."""
    with deployment(ctx, slots=10, task_seconds=1.0, signed=signed, image_bytes=1_048_576) as dep:
        ids = dep.submit(jobs, "latency")
        dep.wait_final(ids, timeout=120)
        with session_scope(dep.sessions) as s:
            rows = s.execute(
                select(Job.provider_task_id, Job.status, Image.archived_at)
                .join(Image, Image.job_id == Job.id)
                .where(Job.id.in_(ids))
            ).all()
        # The worker may archive before the simulator has recorded the answer to its callback:
        # wait for every record, and measure from when the POST started.
        deliveries = dep.wait_succeed_deliveries(len(ids), timeout=30)
    sent = {
        d["task_id"]: d["sent_at"]
        for d in deliveries
        if d["task_status"] == "succeed" and d["outcome"] == "delivered"
    }
    # A succeed callback the webhook did not take is archived by the reconciler instead:
    # its latency is not the callback path's, so it is left out and shown here.
    undelivered = [
        {"task_id": d["task_id"], "http_status": d["http_status"], "error": d["error"]}
        for d in deliveries
        if d["task_status"] == "succeed" and d["outcome"] != "delivered"
    ]
    lat = [
        archived.timestamp() - sent[task_id]
        for task_id, status, archived in rows
        if status == "archived" and archived is not None and task_id in sent
    ]
    details = {
        "samples_ms": sorted(round(x * 1000.0, 1) for x in lat),
        "statuses": dict(Counter(status for _, status, _ in rows)),
        "undelivered_succeed_callbacks": undelivered,
    }
    return lat, details


def run_latency(ctx: Context) -> BenchResult:
    """Signed callbacks (KLING_WEBHOOK_SECRET set) are applied as they come; unsigned final ones
    wait for a worker's lookup first (issue 16), so both paths are measured."""
    jobs = 5 if ctx.smoke else 30
    res = BenchResult("latency", 0.0)
    signed, signed_details = _latency_samples(ctx, jobs, signed=True)
    unsigned, unsigned_details = _latency_samples(ctx, jobs, signed=False)
    ms = 1000.0
    res.figures = [
        Figure(
            "latency", "succeed -> archived p50, signed", percentile(signed, 50) * ms, "ms", None, "<=", 300.0
        ),
        Figure("latency", "succeed -> archived p99, signed", percentile(signed, 99) * ms, "ms"),
        Figure(
            "latency", "succeed -> archived p50, unsigned (lookup first)", percentile(unsigned, 50) * ms, "ms"
        ),
        Figure(
            "latency", "succeed -> archived p99, unsigned (lookup first)", percentile(unsigned, 99) * ms, "ms"
        ),
        Figure(
            "latency",
            "jobs measured",
            float(len(signed) + len(unsigned)),
            "",
            float(2 * jobs),
            "==",
            1.0,
            on="ratio",
        ),
    ]
    res.details = {
        "jobs": jobs,
        "image_bytes": 1_048_576,
        "signed": signed_details,
        "unsigned": unsigned_details,
    }
    return res
