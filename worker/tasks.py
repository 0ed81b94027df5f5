"""Celery tasks: thin wrappers that take ids, call worker.pipeline and turn outcomes into retries.

The base task owns the per-process `Services` (database, provider, limiter, S3); outbox rows a run
writes are published by its sessions' after-commit hook, so work is queued only once committed.
"""

from __future__ import annotations

import logging

from celery import Celery, Task

from models.logging import log_context
from models.outbox import ARCHIVE_JOB, NOTIFY, RELEASE_SLOTS, SUBMIT_JOB
from worker import metrics, pipeline
from worker.factory import VISIBILITY_TIMEOUT
from worker.outbox import celery_publisher, relay
from worker.services import Services

log = logging.getLogger(__name__)

MAX_COUNTDOWN = VISIBILITY_TIMEOUT / 4

# Outbox task name -> Celery task name.
TASK_NAMES = {
    SUBMIT_JOB: "kling.submit_job",
    ARCHIVE_JOB: "kling.archive_job",
    RELEASE_SLOTS: "kling.release_slots",
    NOTIFY: "kling.notify",
}


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

    def finish(self, outcome: pipeline.Outcome) -> str:
        metrics.tasks_total.labels(task=self.name, outcome=outcome.step.value).inc()
        if outcome.step is pipeline.Step.RETRY:
            # The retried message carries the claim, so it (and only it) takes the job back. Its
            # countdown stays well below the broker's visibility timeout, or Redis would hand the
            # waiting message to a second worker.
            kwargs = {**self.request.kwargs, "claim": outcome.claim} if outcome.claim else None
            countdown = min(outcome.retry_in, MAX_COUNTDOWN)
            raise self.retry(countdown=countdown, kwargs=kwargs, max_retries=None)
        return outcome.step.value


def register(app: Celery) -> None:
    @app.task(bind=True, base=KlingTask, shared=False, name="kling.submit_job")
    def submit_job(self: KlingTask, job_id: str, claim: str | None = None) -> str:
        with log_context(job_id=job_id):
            outcome = pipeline.submit_job(self.services, job_id, attempt=self.request.retries, claim=claim)
            return self.finish(outcome)

    @app.task(bind=True, base=KlingTask, shared=False, name="kling.archive_job")
    def archive_job(self: KlingTask, job_id: str, claim: str | None = None) -> str:
        with log_context(job_id=job_id):
            outcome = pipeline.archive_job(self.services, job_id, attempt=self.request.retries, claim=claim)
            return self.finish(outcome)

    @app.task(bind=True, base=KlingTask, shared=False, name="kling.release_slots")
    def release_slots(self: KlingTask, job_id: str) -> list[str]:
        with log_context(job_id=job_id):
            return pipeline.release_slots(self.services, job_id, durable=True)

    @app.task(bind=True, base=KlingTask, shared=False, name="kling.notify")
    def notify(self: KlingTask, job_id: str) -> str:
        from worker import notify as notify_mod

        with log_context(job_id=job_id):
            return self.finish(notify_mod.notify_job(self.services, job_id, attempt=self.request.retries))

    @app.task(bind=True, base=KlingTask, shared=False, name="kling.relay_outbox")
    def relay_outbox(self: KlingTask) -> int:
        svc = self.services
        assert svc.publish is not None
        return relay(svc.sessions, svc.publish)

    @app.task(bind=True, base=KlingTask, shared=False, name="kling.reconcile")
    def reconcile(self: KlingTask) -> dict[str, int]:
        report = pipeline.reconcile(self.services)
        return {"polled": report.polled, "changed": report.changed, "errors": report.errors}

    @app.task(bind=True, base=KlingTask, shared=False, name="kling.sweep")
    def sweep(self: KlingTask) -> dict[str, int]:
        report = pipeline.sweep(self.services)
        return {"jobs": len(report.jobs), "pending": report.pending_images, "at_risk": report.at_risk}
