"""Expected-duration polling: ask the provider about in-flight tasks that run past what such tasks
usually take, so a lost callback holds its slots for about one task's length, not
RECONCILE_AFTER_SECONDS (docs/architecture.md, "Expected-duration polling").

Callbacks stay the fast path and `repair.reconcile` the last safety net. `expected` and `due`
decide, with no I/O; `poll_overdue` reads the jobs, asks the provider (one list request where it
has one, single lookups for the rest, within `POLL_MAX_PER_SECOND`) and applies the answers,
handing freed slots straight to the next jobs as the webhook does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import select, update

from kling import Task
from kling.client import UnsupportedOperation
from kling.errors import KlingError, RateLimited
from kling.kinds import DEFAULT_KIND
from models.base import utcnow
from models.db import session_scope
from models.enums import JobStatus
from models.logging import log_context
from models.outbox import RELEASE_SLOTS
from models.statemachine import ApplyResult, apply_provider_task
from models.tables import Image, Job
from worker.outbox import publish_rows
from worker.provider import ProviderNotConfigured
from worker.slots import hand_off_slots

if TYPE_CHECKING:
    from celery import Celery

    from worker.services import Services
    from worker.tasks import KlingTask, Schedule

log = logging.getLogger(__name__)

# Learned from the last SAMPLES tasks of a (provider, model) that ended, by the provider's clock;
# below MIN_SAMPLES the kind is probed instead (see `due`).
SAMPLES = 200
MIN_SAMPLES = 3
IN_FLIGHT_LIMIT = 1000
# Never ask about one task more often than this, whatever the durations.
MIN_REPOLL_SECONDS = 0.25
# A kind not learned yet is first asked about at this age.
PROBE_FROM_SECONDS = 1.0
# A task past its expected time is asked about again after this fraction of its age: a task stuck
# at the provider for ten minutes costs a request a minute, not one a second.
REPOLL_AGE_FRACTION = 0.1
PROBE_AGE_FRACTION = 0.25
# From this many due tasks on, one list request of the account's newest tasks first: four times
# the tasks in flight (they are among the newest), at least 50, at most Kling's 500.
LIST_FROM = 3
LIST_PAGE_SIZE = 500
LIST_PAGE_MIN = 50
# Learned durations are read again after this long: a round runs 4 times a second, and reading
# 200 jobs' durations (and models from their params) each time was most of a round's cost.
DURATIONS_TTL_SECONDS = 10.0
# After a 1302 the account's polling pauses, doubling up to the cap while the answers repeat.
PAUSE_FIRST_SECONDS = 2.0
PAUSE_MAX_SECONDS = 60.0
# Longer than a round can take: a budget of requests, each up to the client's 5 + 30 s timeouts.
ROUND_LOCK_SECONDS = 120.0

Key = tuple[str, str]  # (provider, model)
Lister = tuple[str, str, str]  # (account, provider, kind): one task list at the provider


@dataclass(frozen=True)
class Expected:
    p50: float
    p90: float


@dataclass(frozen=True)
class InFlight:
    id: str
    task_id: str | None
    key: Key
    submitted_at: datetime
    last_polled_at: datetime | None
    account: str | None = None  # every lookup goes to the account the task was created on
    kind: str = DEFAULT_KIND  # the task kind: which endpoint knows the task


def percentile(ordered: Sequence[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def expected(samples: Sequence[float]) -> Expected | None:
    """How long tasks take: p50 and p90 of the samples; None while there are too few."""
    if len(samples) < MIN_SAMPLES:
        return None
    ordered = sorted(samples)
    return Expected(percentile(ordered, 50), percentile(ordered, 90))


def due(
    jobs: Sequence[InFlight],
    durations: Mapping[Key, Expected],
    now: datetime,
    *,
    slots_wanted: bool,
) -> list[InFlight]:
    """The in-flight jobs to ask about now, the longest unheard-of first.

    A task of a learned kind is due once it has run past the kind's p90 (its p50 while queued
    jobs wait for slots: a slot freed early is worth a request), then again every max(0.25 s,
    p50/4 or p50/2, age/10). A kind not learned yet is probed: from 1 s on, every quarter of the
    task's age, so its first tasks are found within a quarter of their length and teach the rest.
    """
    chosen: list[tuple[datetime, InFlight]] = []
    for job in jobs:
        age = (now - job.submitted_at).total_seconds()
        exp = durations.get(job.key)
        if exp is None:
            after, repoll = PROBE_FROM_SECONDS, max(MIN_REPOLL_SECONDS, age * PROBE_AGE_FRACTION)
        else:
            after = exp.p50 if slots_wanted else exp.p90
            spacing = exp.p50 * (0.25 if slots_wanted else 0.5)
            repoll = max(MIN_REPOLL_SECONDS, spacing, age * REPOLL_AGE_FRACTION)
        if age < after:
            continue
        if job.last_polled_at is not None and (now - job.last_polled_at).total_seconds() < repoll:
            continue
        chosen.append((job.last_polled_at or job.submitted_at, job))
    chosen.sort(key=lambda pair: pair[0])
    return [job for _, job in chosen]


# --- I/O ----------------------------------------------------------------------------------------------
class PollGate:
    """Per account, in Redis: one poll round at a time, and a pause after the provider said 1302."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._pause = f"{prefix}:pause"
        self._backoff = f"{prefix}:backoff"
        self._lock_name = f"{prefix}:round"

    def try_round(self) -> Any:
        """A held round lock, or None when another round runs or the account is paused."""
        if self._redis.exists(self._pause):
            return None
        lock = self._redis.lock(self._lock_name, timeout=ROUND_LOCK_SECONDS, blocking=False)
        return lock if lock.acquire() else None

    def rate_limited(self) -> float:
        """Pause the account's polling; returns the pause, doubled while 1302s repeat."""
        last = self._redis.get(self._backoff)
        pause = min(PAUSE_MAX_SECONDS, float(last) * 2) if last else PAUSE_FIRST_SECONDS
        self._redis.set(self._pause, "1", px=int(pause * 1000))
        self._redis.set(self._backoff, str(pause), px=int(PAUSE_MAX_SECONDS * 4000))
        return pause

    def answered(self) -> None:
        self._redis.delete(self._backoff)


class LocalPollGate:
    """The same rules in one process (the demo's embedded broker, which has no Redis)."""

    def __init__(self) -> None:
        self._round = threading.Lock()
        self._paused_until = 0.0
        self._backoff = 0.0

    def try_round(self) -> Any:
        if time.monotonic() < self._paused_until or not self._round.acquire(blocking=False):
            return None
        return self._round

    def rate_limited(self) -> float:
        self._backoff = min(PAUSE_MAX_SECONDS, self._backoff * 2) if self._backoff else PAUSE_FIRST_SECONDS
        self._paused_until = time.monotonic() + self._backoff
        return self._backoff

    def answered(self) -> None:
        self._backoff = 0.0


@dataclass
class PollReport:
    due: int = 0
    requests: int = 0
    list_requests: int = 0
    changed: list[str] = field(default_factory=list)
    rate_limited: bool = False
    skipped: bool = False


_IN_FLIGHT = (
    select(
        Job.id,
        Job.provider_task_id,
        Job.provider,
        Job.params["model_name"].as_string(),
        Job.submitted_at,
        Job.last_polled_at,
        Job.account,
        Job.kind,
    )
    .where(Job.status.in_([JobStatus.SUBMITTED, JobStatus.PROCESSING]), Job.submitted_at.is_not(None))
    .limit(IN_FLIGHT_LIMIT)
)
# The newest archived jobs by the (status, updated_at) index; succeeded-not-archived ones are few.
_SAMPLES = (
    select(Job.provider, Job.params["model_name"].as_string(), Job.provider_seconds)
    .where(Job.status == JobStatus.ARCHIVED, Job.provider_seconds.is_not(None))
    .order_by(Job.updated_at.desc())
    .limit(SAMPLES)
)
_WAITING = select(Job.id).where(Job.status == JobStatus.QUEUED).limit(1)


class DurationCache:
    """The learned durations of one process, read from the database at most every TTL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: dict[Key, Expected] = {}

    def get(self, load: Callable[[], dict[Key, Expected]]) -> dict[Key, Expected]:
        with self._lock:
            if time.monotonic() - self._at >= DURATIONS_TTL_SECONDS:
                self._value, self._at = load(), time.monotonic()
            return self._value


def _learned(svc: Services) -> dict[Key, Expected]:
    samples: dict[Key, list[float]] = {}
    with session_scope(svc.sessions) as s:
        for provider, model, seconds in s.execute(_SAMPLES):
            samples.setdefault((provider, model or ""), []).append(seconds)
    return {key: exp for key, values in samples.items() if (exp := expected(values)) is not None}


def _read(svc: Services) -> tuple[list[InFlight], dict[Key, Expected], bool]:
    with session_scope(svc.sessions) as s:
        jobs = [
            InFlight(job_id, task_id, (provider, model or ""), submitted, polled, account, kind)
            for job_id, task_id, provider, model, submitted, polled, account, kind in s.execute(_IN_FLIGHT)
        ]
        if not jobs:
            return [], {}, False
        waiting = s.scalar(_WAITING) is not None
    return jobs, svc.durations.get(lambda: _learned(svc)), waiting


def poll_overdue(svc: Services) -> PollReport:
    """One round: ask about the due in-flight tasks within the request budget, apply the answers."""
    report = PollReport()
    lock = svc.poll_gate.try_round()
    if lock is None:
        report.skipped = True
        return report
    try:
        jobs, durations, waiting = _read(svc)
        todo = due(jobs, durations, utcnow(), slots_wanted=waiting)
        report.due = len(todo)
        budget = max(1, int(svc.settings.poll_max_per_second * svc.settings.poll_interval_seconds))
        try:
            in_flight = Counter(_lister(svc, job) for job in jobs)
            for job, task in _ask(svc, todo, in_flight, budget, report):
                try:
                    _apply(svc, job, task, report)
                except Exception as exc:  # noqa: BLE001  (one bad job must not stop the round)
                    log.warning("poll: job %s: %s: %s", job.id, type(exc).__name__, exc)
                    mark_polled(svc, job.id)
        except RateLimited:
            report.rate_limited = True
            pause = svc.poll_gate.rate_limited()
            log.warning("poll: the provider answered 1302, polling paused %.0f s", pause)
        else:
            if report.requests:
                svc.poll_gate.answered()
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()  # a round longer than its lock lost it; nothing to give back
    return report


def _ask(
    svc: Services,
    todo: list[InFlight],
    in_flight: Mapping[Lister, int],
    budget: int,
    report: PollReport,
) -> list[tuple[InFlight, Task]]:
    """Provider answers for due jobs: one list request first when several are due, then lookups.

    With a budget of one request a round (the defaults), every other round skips the list, so the
    longest-unheard-of task is looked up even when it fell off the list's page.
    """
    answers: list[tuple[InFlight, Task]] = []
    left = list(todo)
    by_lister: dict[Lister, list[InFlight]] = {}
    for job in left:
        by_lister.setdefault(_lister(svc, job), []).append(job)
    lists_allowed = budget > 1 or int(time.time() / svc.settings.poll_interval_seconds) % 2 == 0
    for lister, jobs in by_lister.items():
        account, provider_name, kind = lister
        if not lists_allowed or len(jobs) < LIST_FROM or report.requests >= budget:
            continue
        page_size = min(LIST_PAGE_SIZE, max(LIST_PAGE_MIN, 4 * in_flight.get(lister, 0)))
        try:
            provider = svc.provider_for_account(account, provider_name)
            listed = provider.list_tasks(kind, page=1, page_size=page_size)
        except UnsupportedOperation:
            continue
        except RateLimited:
            raise
        except (KlingError, ProviderNotConfigured) as exc:  # the lookups below still run
            report.requests += 1
            log.warning("poll: listing %s's tasks failed: %s: %s", provider_name, type(exc).__name__, exc)
            continue
        report.requests += 1
        report.list_requests += 1
        by_task = {task.task_id: task for task in listed}
        found = [(job, by_task[job.task_id]) for job in jobs if job.task_id in by_task]
        answers += found
        seen = {job.id for job, _ in found}
        left = [job for job in left if job.id not in seen]
    for job in left:
        if report.requests >= budget:
            break
        report.requests += 1
        try:
            provider = svc.provider_for_account(job.account, job.key[0])
            if job.task_id:
                answers.append((job, provider.get_task(job.kind, job.task_id)))
            else:
                answers.append((job, provider.get_task(job.kind, external_task_id=job.id)))
        except RateLimited:
            raise
        except Exception as exc:  # noqa: BLE001  (the reconciler looks at it again later)
            log.warning("poll: job %s: %s: %s", job.id, type(exc).__name__, exc)
            mark_polled(svc, job.id)  # to the back of the line, not first again next round
    return answers


def _lister(svc: Services, job: InFlight) -> Lister:
    """Whose task list a job's task is on: its account's, for its provider and task kind."""
    return svc.account(job.account).name, job.key[0], job.kind


def mark_polled(svc: Services, job_id: str) -> None:
    """A job whose poll failed goes to the back of the line (the poller's and reconcile's) instead
    of blocking the others."""
    try:
        with session_scope(svc.sessions) as s:
            s.execute(update(Job).where(Job.id == job_id).values(last_polled_at=utcnow()))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not mark job %s polled: %s", job_id, type(exc).__name__)


def _apply(svc: Services, job: InFlight, task: Task, report: PollReport) -> None:
    if apply_answer(svc, job.id, task, job.account).changed:
        report.changed.append(job.id)


def apply_answer(svc: Services, job_id: str, task: Task, account: str | None = None) -> ApplyResult:
    """Apply the provider's answer about a job's task, then do what a final state calls for."""
    with svc.engine.begin() as conn:
        result = apply_provider_task(conn, job_id, task, source="poll")
    if not task.status.is_final:
        svc.renew(job_id, account)  # still running at the provider: keep its slots leased
    if any(row.task == RELEASE_SLOTS for row in result.outbox):
        # The first word of a final state: its slots go to the next jobs now, as after a callback.
        hand_off_slots(svc, job_id, result.outbox)
    elif result.outbox and svc.publish is not None:
        publish_rows(svc.sessions, svc.publish, result.outbox)
    return result


_PROVIDER_DONE = (JobStatus.SUCCEEDED, JobStatus.ARCHIVED, JobStatus.FAILED)
# A job that succeeded without images (a bare report) still wants the lookup that carries them.
_HAS_IMAGES = select(Image.id).where(Image.job_id == Job.id).exists().label("has_images")


def confirm(svc: Services, job_id: str) -> str:
    """An unsigned callback said the job's task ended: ask the provider and apply its answer, not
    the callback's (webhook/callbacks.py). Returns the outcome, or why nothing was asked.

    A failed lookup is left to the poller and reconcile, which ask about in-flight jobs anyway.
    """
    with session_scope(svc.sessions) as s:
        row = s.execute(
            select(Job.provider, Job.provider_task_id, Job.status, Job.account, Job.kind, _HAS_IMAGES).where(
                Job.id == job_id
            )
        ).one_or_none()
    if row is None:
        return "unknown_job"
    if JobStatus(row.status) in _PROVIDER_DONE and (row.status != JobStatus.SUCCEEDED or row.has_images):
        return "already_final"  # a poll or a signed report got there first
    try:
        provider = svc.provider_for_account(row.account, row.provider)
        if row.provider_task_id:
            task = provider.get_task(row.kind, row.provider_task_id)
        else:
            task = provider.get_task(row.kind, external_task_id=job_id)
        return apply_answer(svc, job_id, task, row.account).outcome.value
    except Exception as exc:  # noqa: BLE001  (the poller and reconcile look at it again)
        log.warning("confirm: job %s: %s: %s", job_id, type(exc).__name__, exc)
        return "lookup_failed"


def register(app: Celery) -> Schedule:
    """The poll task and its place in the beat schedule; the confirm task (one job's lookup)."""
    from worker.tasks import CONFIRM_TASK, POLL_TASK, KlingTask, every

    @app.task(bind=True, base=KlingTask, shared=False, name=POLL_TASK.name)
    def poll_overdue_task(self: KlingTask) -> dict[str, int]:
        report = poll_overdue(self.services)
        return {"due": report.due, "requests": report.requests, "changed": len(report.changed)}

    @app.task(bind=True, base=KlingTask, shared=False, name=CONFIRM_TASK.name)
    def confirm_task(self: KlingTask, job_id: str) -> str:
        with log_context(job_id=job_id):
            return confirm(self.services, job_id)

    interval = app.conf.kling_settings.poll_interval_seconds
    # A round nobody ran within a few intervals is stale: dropped, not run late ahead of dispatches.
    entry = {**every(POLL_TASK, interval), "options": {"expires": max(1.0, interval * 4)}}
    return {"poll-overdue": entry}
