"""What every Celery task shares: the one table of tasks (name, priority), their base class, the relay.

Each workflow module (submit, slots, archiving, repair, notify) defines its own thin tasks, which
take ids, call its plain functions and turn the returned `Outcome` into acks and retries, in a
`register(app)` that `worker.factory.make_celery` calls. The base task owns the per-process
`Services` (database, provider, limiter, S3); outbox rows a run writes are published by its
sessions' after-commit hook, so work is queued only once committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Celery, Task

from models.logging import log_context
from models.outbox import ALERT, ARCHIVE_JOB, CONFIRM_JOB, DISPATCH_JOB, NOTIFY, RELEASE_SLOTS, SUBMIT_JOB
from worker import metrics
from worker.factory import VISIBILITY_TIMEOUT
from worker.outbox import celery_publisher, relay
from worker.outcome import Outcome, Step
from worker.services import Services

log = logging.getLogger(__name__)

MAX_COUNTDOWN = VISIBILITY_TIMEOUT / 4


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the Celery task name
    priority: int
    # The name outbox rows store for it (models/outbox.py, kept in the database), if rows queue it.
    outbox: str | None = None


# Message priorities, one queue. The Redis transport keeps a list per priority step (0, 3, 6, 9) and
# a worker pops them in that order: LOWER IS SOONER (the reverse of AMQP). A freed provider slot is
# idle until its job's submit runs, so a dispatched submit and a release go ahead of archive work
# (a 1 MB archive is several times a submit) and the periodic safety nets go last. A new job's
# first submit waits behind archives: with a backlog of 20,000 it only joins the limiter's queue,
# and ahead of the dispatched ones it kept the freed slots idle (docs/performance.md, backlog).
# A worker takes the next message only when a process is free (`worker_prefetch_multiplier=1`
# with `task_acks_late`), so the order is decided at each pop.
SUBMIT_TASK = TaskSpec("kling.submit_job", 6, SUBMIT_JOB)
# The same Celery task, published by the pump for a job that slots were just found for.
DISPATCH_TASK = TaskSpec("kling.submit_job", 0, DISPATCH_JOB)
RELEASE_TASK = TaskSpec("kling.release_slots", 0, RELEASE_SLOTS)
# The lookup that confirms an unsigned final callback: it frees slots the same way.
CONFIRM_TASK = TaskSpec("kling.confirm_job", 0, CONFIRM_JOB)
ARCHIVE_TASK = TaskSpec("kling.archive_job", 3, ARCHIVE_JOB)
# Downstream deliveries go last (with the sweep): a worker pops every queued archive before any
# delivery, and a delivery holds a process for at most its overall deadline (worker.delivery,
# 15 s), so a slow or hostile receiver can delay an archive by that much at worst, never stall it.
# One queue keeps every worker command (compose, demo, chaos, bench, tests) consuming notify.
NOTIFY_TASK = TaskSpec("kling.notify", 9, NOTIFY)
# Account alerts (worker/alerts.py): rare, and as bounded as a delivery.
ALERT_TASK = TaskSpec("kling.alert", 9, ALERT)
RELAY_TASK = TaskSpec("kling.relay_outbox", 6)
RECONCILE_TASK = TaskSpec("kling.reconcile", 6)
SWEEP_TASK = TaskSpec("kling.sweep", 9)
TASKS = (
    SUBMIT_TASK,
    RELEASE_TASK,
    CONFIRM_TASK,
    ARCHIVE_TASK,
    NOTIFY_TASK,
    ALERT_TASK,
    RELAY_TASK,
    RECONCILE_TASK,
    SWEEP_TASK,
)

# Outbox task name -> Celery task name and message priority (the publisher's lookups).
TASK_NAMES = {spec.outbox: spec.name for spec in (*TASKS, DISPATCH_TASK) if spec.outbox is not None}
OUTBOX_PRIORITIES = {
    spec.outbox: spec.priority for spec in (*TASKS, DISPATCH_TASK) if spec.outbox is not None
}
# Celery task name -> message priority (the app's task routes: retries and direct sends).
TASK_PRIORITIES = {spec.name: spec.priority for spec in TASKS}

# Beat entries a workflow adds to the app's schedule: entry name -> Celery's entry.
Schedule = dict[str, dict[str, Any]]


def every(spec: TaskSpec, seconds: float) -> dict[str, Any]:
    """A beat entry running `spec` every `seconds`."""
    return {"task": spec.name, "schedule": timedelta(seconds=seconds)}


def services_for(app: Celery) -> Services:
    """One `Services` per app and process, built on first use (after the fork)."""
    svc: Services | None = getattr(app, "kling_services", None)
    if svc is None:
        svc = Services(app.conf.kling_settings)
        app.kling_services = svc
    if svc.publish is None:
        svc.publish = celery_publisher(app)
    return svc


class KlingTask(Task):  # type: ignore[misc]  # celery ships no type information
    abstract = True

    @property
    def services(self) -> Services:
        return services_for(self.app)

    def finish(self, outcome: Outcome) -> str:
        metrics.tasks_total.labels(task=self.name, outcome=outcome.step.value).inc()
        if outcome.step is Step.RETRY:
            # The retried message carries the claim, so it (and only it) takes the job back. Its
            # countdown stays well below the broker's visibility timeout, or Redis would hand the
            # waiting message to a second worker.
            kwargs = {**self.request.kwargs, "claim": outcome.claim} if outcome.claim else None
            countdown = min(outcome.retry_in, MAX_COUNTDOWN)
            raise self.retry(countdown=countdown, kwargs=kwargs, max_retries=None)
        return outcome.step.value


def claimed_step_task(app: Celery, spec: TaskSpec, step: Callable[..., Outcome]) -> None:
    """Register `spec` as the task of a claimed step of one job (submit, archive): it runs
    `step(services, job_id, attempt=, claim=)` and turns the outcome into an ack or a retry."""

    @app.task(bind=True, base=KlingTask, shared=False, name=spec.name)
    def run_step(self: KlingTask, job_id: str, claim: str | None = None) -> str:
        with log_context(job_id=job_id):
            return self.finish(step(self.services, job_id, attempt=self.request.retries, claim=claim))


def register(app: Celery) -> Schedule:
    """The outbox relay task, run by beat as the safety net for rows no task published."""

    @app.task(bind=True, base=KlingTask, shared=False, name=RELAY_TASK.name)
    def relay_outbox(self: KlingTask) -> int:
        svc = self.services
        assert svc.publish is not None
        return relay(svc.sessions, svc.publish)

    return {"relay-outbox": every(RELAY_TASK, app.conf.kling_settings.outbox_relay_seconds)}
