"""Expected-duration polling: ask the provider about in-flight tasks that run past what such tasks
usually take, so a lost callback holds its slots for about one task's length, not
RECONCILE_AFTER_SECONDS (docs/architecture.md, "Expected-duration polling").

Callbacks stay the fast path and `repair.reconcile` the last safety net. `worker.poll_plan`
decides, with no I/O; `poll_overdue` reads the jobs, asks the provider (one list request where it
has one, single lookups for the rest, within `POLL_MAX_PER_SECOND`) and applies the answers,
handing freed slots straight to the next jobs as the webhook does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import select, update

from kling import Task
from kling.client import UnsupportedOperation
from kling.errors import KlingError, RateLimited
from models.base import utcnow
from models.db import session_scope
from models.enums import JobStatus
from models.logging import log_context
from models.outbox import RELEASE_SLOTS
from models.statemachine import ApplyResult, apply_provider_task
from models.tables import Image, Job
from worker.outbox import publish_rows
from worker.poll_loop import PollLoop
from worker.poll_plan import (
    Expected,
    InFlight,
    Key,
    PollReport,
    due,
    expected,
    next_due,
    next_round_in,
    wants_list,
)
from worker.provider import ProviderNotConfigured
from worker.slots import hand_off_slots

if TYPE_CHECKING:
    from celery import Celery

    from worker.services import Services
    from worker.tasks import KlingTask, Schedule

log = logging.getLogger(__name__)

# Learned from the last SAMPLES tasks of a (provider, model) that ended, by the provider's clock.
SAMPLES = 200
IN_FLIGHT_LIMIT = 1000
# A list request asks for the account's newest tasks: four times the tasks in flight (they are
# among the newest), at least 50, at most Kling's 500.
LIST_PAGE_SIZE = 500
LIST_PAGE_MIN = 50
# Learned durations are read again after this long: rounds run several times a second, and reading
# 200 jobs' durations (and models from their params) each time was most of a round's cost.
DURATIONS_TTL_SECONDS = 10.0

Lister = tuple[str, str, str]  # (account, provider, kind): one task list at the provider


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
    """One round: ask about the due in-flight tasks within each account's request budget, apply
    the answers."""
    report = PollReport()
    lock = svc.poll_gate.try_round()
    if lock is None:
        report.skipped = True
        return report
    try:
        jobs, durations, waiting = _read(svc)
        now = utcnow()
        todo = due(jobs, durations, now, slots_wanted=waiting)
        report.due = len(todo)
        answers: list[tuple[InFlight, Task]] = []
        if todo:
            round_ = _Round(svc, jobs=jobs, durations=durations, now=now, waiting=waiting, report=report)
            answers = round_.ask(todo)
            for job, task in answers:
                try:
                    _apply(svc, job, task, report)
                except Exception as exc:  # noqa: BLE001  (one bad job must not stop the round)
                    log.warning("poll: job %s: %s: %s", job.id, type(exc).__name__, exc)
                    mark_polled(svc, job.id)
            if round_.answered:
                svc.poll_gate.answered(round_.answered)
        heard = {job.id: task for job, task in answers}
        report.next_due_at = next_due(jobs, heard, durations, now, slots_wanted=waiting)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()  # a round longer than its lock lost it; nothing to give back
    return report


class _Round:
    """One round's requests: a list request per task list where it pays, then lookups, each account
    within POLL_MAX_PER_SECOND x POLL_INTERVAL_SECONDS requests; a 1302 pauses that account only."""

    def __init__(
        self,
        svc: Services,
        *,
        jobs: Sequence[InFlight],
        durations: Mapping[Key, Expected],
        now: datetime,
        waiting: bool,
        report: PollReport,
    ) -> None:
        self.svc, self.jobs, self.durations, self.now, self.waiting = svc, jobs, durations, now, waiting
        self.report = report
        self.budget = max(1, int(svc.settings.poll_max_per_second * svc.settings.poll_interval_seconds))
        self.listers = {job.id: _lister(svc, job) for job in jobs}
        self.spent: Counter[str] = Counter()
        self.answered: set[str] = set()
        self.paused = svc.poll_gate.paused({lister[0] for lister in self.listers.values()})

    def _spend(self, account: str) -> bool:
        """Take one request of the account's budget; False when it has none left or is paused."""
        if account in self.paused or self.spent[account] >= self.budget:
            return False
        self.spent[account] += 1
        self.report.requests += 1
        return True

    def _rate_limited(self, account: str) -> None:
        self.report.rate_limited = True
        self.paused.add(account)
        self.answered.discard(account)
        pause = self.svc.poll_gate.rate_limited(account)
        log.warning("poll: account %s answered 1302, its polling paused %.0f s", account, pause)

    def ask(self, todo: list[InFlight]) -> list[tuple[InFlight, Task]]:
        """Lookups first for the due jobs a list did not show last time (fallen off its page), then
        a list request per task list where it pays, then lookups for the rest."""
        answers: list[tuple[InFlight, Task]] = []
        missed = self.svc.poll_gate.missed() & {job.id for job in todo}
        due_by: dict[Lister, list[InFlight]] = {}
        for job in todo:
            if job.id in missed:
                if (answer := self._lookup(job)) is not None:
                    answers.append((job, answer))
            else:
                due_by.setdefault(self.listers[job.id], []).append(job)
        not_shown: list[str] = []
        for lister, due_jobs in due_by.items():
            shown = self._listed(lister, due_jobs)
            if shown is not None:
                looked_up = {job.id for job, _ in answers}  # a missed job may be on this page too
                answers += [(job, task) for job, task in shown if job.id not in looked_up]
                found = {job.id for job, _ in shown}
                not_shown += [job.id for job in due_jobs if job.id not in found]
        answered = {job.id for job, _ in answers}
        for job in todo:
            if job.id not in answered and job.id not in missed and (answer := self._lookup(job)) is not None:
                answers.append((job, answer))
                answered.add(job.id)
        found_again = missed & answered
        if not_shown or found_again:
            try:
                self.svc.poll_gate.note_missed([i for i in not_shown if i not in answered], found_again)
            except redis.exceptions.RedisError as exc:  # the answers are still applied
                log.warning("poll: could not note the jobs a list did not show: %s", type(exc).__name__)
        return answers

    def _listed(self, lister: Lister, due_jobs: list[InFlight]) -> list[tuple[InFlight, Task]] | None:
        """One list request's answers: the due jobs on the page, and every other in-flight job of
        the list whose task has ended (an answer that costs nothing more). None: no list asked."""
        account, provider_name, kind = lister
        in_flight = [job for job in self.jobs if self.listers[job.id] == lister]
        if not wants_list(len(due_jobs), len(in_flight), slots_wanted=self.waiting):
            return None
        if account in self.paused or self.spent[account] >= self.budget:
            return None
        page_size = min(LIST_PAGE_SIZE, max(LIST_PAGE_MIN, 4 * len(in_flight)))
        try:
            provider = self.svc.provider_for_account(account, provider_name)
            self._spend(account)
            tasks = provider.list_tasks(kind, page=1, page_size=page_size)
        except UnsupportedOperation:
            self.spent[account] -= 1  # nothing was asked: the lookups have the request
            self.report.requests -= 1
            return None
        except RateLimited:
            self._rate_limited(account)
            return None
        except (KlingError, ProviderNotConfigured) as exc:  # the lookups still run
            log.warning("poll: listing %s's tasks failed: %s: %s", provider_name, type(exc).__name__, exc)
            return None
        self.report.list_requests += 1
        self.answered.add(account)
        by_task = {task.task_id: task for task in tasks}
        due_ids = {job.id for job in due_jobs}
        return [
            (job, task)
            for job in in_flight
            if (task := by_task.get(job.task_id or "")) is not None
            and (job.id in due_ids or task.status.is_final)
        ]

    def _lookup(self, job: InFlight) -> Task | None:
        account = self.listers[job.id][0]
        if not self._spend(account):
            return None
        try:
            provider = self.svc.provider_for_account(job.account, job.key[0])
            if job.task_id:
                task = provider.get_task(job.kind, job.task_id)
            else:
                task = provider.get_task(job.kind, external_task_id=job.id)
        except RateLimited:
            self._rate_limited(account)
            return None
        except Exception as exc:  # noqa: BLE001  (the reconciler looks at it again later)
            log.warning("poll: job %s: %s: %s", job.id, type(exc).__name__, exc)
            mark_polled(self.svc, job.id)  # to the back of the line, not first again next round
            return None
        self.answered.add(account)
        return task


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


def apply_answer(
    svc: Services,
    job_id: str,
    task: Task,
    account: str | None = None,
    *,
    keep_first: list[str] | None = None,
) -> ApplyResult:
    """Apply the provider's answer about a job's task, then do what a final state calls for
    (`keep_first`: see `worker.slots.pump`)."""
    with svc.engine.begin() as conn:
        result = apply_provider_task(conn, job_id, task, source="poll")
    if not task.status.is_final:
        svc.renew(job_id, account)  # still running at the provider: keep its slots leased
    if any(row.task == RELEASE_SLOTS for row in result.outbox):
        # The first word of a final state: its slots go to the next jobs now, as after a callback.
        hand_off_slots(svc, job_id, result.outbox, keep_first=keep_first)
    elif result.outbox and svc.publish is not None:
        publish_rows(svc.sessions, svc.publish, result.outbox)
    return result


_PROVIDER_DONE = (JobStatus.SUCCEEDED, JobStatus.ARCHIVED, JobStatus.FAILED)
# A job that succeeded without images (a bare report) still wants the lookup that carries them.
_HAS_IMAGES = select(Image.id).where(Image.job_id == Job.id).exists().label("has_images")


def confirm(svc: Services, job_id: str, *, keep_first: list[str] | None = None) -> str:
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
        return apply_answer(svc, job_id, task, row.account, keep_first=keep_first).outcome.value
    except Exception as exc:  # noqa: BLE001  (the poller and reconcile look at it again)
        log.warning("confirm: job %s: %s: %s", job_id, type(exc).__name__, exc)
        return "lookup_failed"


def start_in_beat(app: Celery) -> PollLoop:
    """The poller's loop, in a thread of this (the beat) process: rounds on time, not queued."""
    from worker.tasks import services_for

    svc = services_for(app)
    interval = app.conf.kling_settings.poll_interval_seconds

    def run_round() -> float:
        started = utcnow()
        return next_round_in(poll_overdue(svc), started, interval)

    loop = PollLoop(run_round, interval)
    loop.start()
    # A beat stopping mid-round would leave the round lock held: let the round finish first.
    atexit.register(loop.stop)
    app.kling_poller = loop  # for the host to stop (the demo runs beat in a thread)
    log.info("poller: a round every %.2f s in the beat process", loop.interval)
    return loop


def register(app: Celery) -> Schedule:
    """The poller, started with this app's beat (no beat entry: it keeps its own time); the confirm
    task (one job's lookup)."""
    from celery.signals import beat_init

    from worker.submit import submit_here
    from worker.tasks import CONFIRM_TASK, KlingTask

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:  # the signal is global; other apps have their own
            start_in_beat(app)

    beat_init.connect(on_beat_init, weak=False)

    @app.task(bind=True, base=KlingTask, shared=False, name=CONFIRM_TASK.name)
    def confirm_task(self: KlingTask, job_id: str) -> str:
        svc = self.services
        here: list[str] = []  # the job the freed slots went to: submitted here, not queued again
        with log_context(job_id=job_id):
            outcome = confirm(svc, job_id, keep_first=here)
        for queued_id in here:
            submit_here(app, svc, queued_id)
        return outcome

    return {}
