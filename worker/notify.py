"""Downstream webhooks: tell the job's `webhook_url` about the moves it subscribes to
(`webhook_events`, by default how the job ended: models/events.py).

Events are signed with the Standard Webhooks scheme (`NOTIFY_SECRET`), carry the permanent S3
locations (never the provider's expiring URLs), and are retried on Svix's schedule (8 attempts
over about 28 hours); every attempt is recorded (`delivery_attempts`), and an endpoint failing
for 5 days is no longer called (worker/endpoints.py).
The `webhook-id` is stable per (job, event), so a receiver can drop repeats. Each POST goes
through the SSRF guard with an overall deadline (worker.delivery); a failure is recorded as one
word of a fixed vocabulary (models.delivery), which the API shows.

An attempt leases its row before the POST: `next_attempt_at` moves to now + `NOTIFY_LEASE_SECONDS`
(longer than a POST can take), by the database's clock. While the lease is live no other attempt
starts; an attempt that dies mid-flight leaves the row due when the lease runs out, and the
reconciler (worker.repair) sends it again.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kling.callbacks import sign_callback
from models.base import utcnow
from models.db import session_scope
from models.documents import event_job, event_job_document, iso_utc
from models.events import MAX_ATTEMPTS, event_for, retry_delay, subscribed
from models.logging import log_context
from models.tables import DeliveryAttempt, Job, Notification, Transition
from worker import alerts, endpoints
from worker.claims import db_now
from worker.delivery import WebhookSender
from worker.outcome import Outcome, Step
from worker.services import Services

if TYPE_CHECKING:
    from celery import Celery

    from worker.tasks import KlingTask, Schedule

log = logging.getLogger(__name__)

# The reconciler re-sends due deliveries of jobs that ended within this long (the retry schedule
# of models/events.py spans about 28 hours).
GIVE_UP_AFTER = timedelta(hours=48)
RETRY_MARGIN_SECONDS = 1.0


def event_payload(job: Job, event: str) -> dict[str, Any]:
    """The event body: the job and where its images are kept for good."""
    return {"type": event, "timestamp": iso_utc(utcnow()), "data": event_job_document(job)}


def events_due(s: Session, job: Job) -> list[str]:
    """The events of the moves the job made that its webhook_url subscribes to, in order."""
    wanted = subscribed(job.webhook_events)
    moves = s.scalars(select(Transition.to_status).where(Transition.job_id == job.id).order_by(Transition.id))
    heard = (event_for(status) for status in moves)
    return list(dict.fromkeys(e for e in heard if e is not None and e in wanted))


def notify_job(svc: Services, job_id: str, *, sender: WebhookSender | None = None) -> Outcome:
    """Deliver each subscribed event of the job not delivered yet, in order; RETRY (at the soonest
    retry of the failed ones) while one failed and has attempts left."""
    with session_scope(svc.sessions) as s:
        job = event_job(s, job_id)
        if job is None or not job.webhook_url:
            return Outcome(Step.DONE, detail="nothing to notify")
        events = events_due(s, job)
    if not events:
        return Outcome(Step.DONE, detail="nothing to notify")
    sender = sender or WebhookSender(svc.settings.notify_allowed_hosts)
    outcomes = [deliver_event(svc, job_id, event, sender) for event in events]
    retries = [o for o in outcomes if o.step is Step.RETRY]
    if retries:
        first = min(retries, key=lambda o: o.retry_in)
        return Outcome(Step.RETRY, retry_in=first.retry_in, detail=first.detail)
    if len(outcomes) == 1:
        return outcomes[0]
    return Outcome(
        Step.DONE,
        detail="; ".join(f"{e}: {o.detail or o.step.value}" for e, o in zip(events, outcomes, strict=True)),
    )


def deliver_event(svc: Services, job_id: str, event: str, sender: WebhookSender) -> Outcome:
    """One attempt at one event, unless delivered, given up, leased by another attempt or its
    endpoint is disabled; the attempt is recorded with its answer and latency."""
    with session_scope(svc.sessions) as s:
        job = event_job(s, job_id)
        if job is None or not job.webhook_url:
            return Outcome(Step.DONE, detail="nothing to notify")
        note = _notification(s, job_id, event)
        if note.delivered_at is not None:
            return Outcome(Step.DONE, detail="already delivered")
        if note.attempts >= MAX_ATTEMPTS:
            return Outcome(Step.FAILED, detail=f"gave up after {note.attempts} attempts")
        url = job.webhook_url
        if endpoints.is_disabled(s, url):
            note.last_error, note.next_attempt_at = "disabled", None
            return Outcome(Step.FAILED, detail="endpoint disabled")
        if not take_lease(s, note.id, svc.settings.notify_lease_seconds):
            # A live attempt holds the row, or its retry is not due yet (a long countdown wakes
            # early): come back when it is due, so the chain never ends while attempts are left.
            due = note.next_attempt_at or utcnow()
            wait = max(1.0, (due - utcnow()).total_seconds())
            return Outcome(
                Step.RETRY, retry_in=wait + RETRY_MARGIN_SECONDS, detail="another attempt holds this delivery"
            )
        note_id, attempt = note.id, note.attempts + 1
        body = json.dumps(event_payload(job, event), separators=(",", ":")).encode()

    msg_id = f"msg_{job_id}_{event}"
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    secret = svc.settings.notify_secret
    if secret is not None:
        headers["webhook-signature"] = sign_callback(secret.get_secret_value(), msg_id, timestamp, body)

    # Through the SSRF guard, within an overall deadline; the outcome in the fixed vocabulary.
    started = time.monotonic()
    delivery = sender.post(url, body, headers)
    latency_ms = (time.monotonic() - started) * 1000
    status, error = delivery.status, delivery.error

    delay = None if error is None else retry_delay(attempt)
    now = utcnow()
    with session_scope(svc.sessions) as s:
        s.add(
            DeliveryAttempt(
                notification_id=note_id,
                attempt=attempt,
                at=now,
                status=status,
                error=None if error is None else error.value,
                latency_ms=round(latency_ms, 1),
            )
        )
        s.execute(
            update(Notification)
            # A row another attempt delivered meanwhile stays delivered.
            .where(Notification.id == note_id, Notification.delivered_at.is_(None))
            .values(
                attempts=Notification.attempts + 1,
                last_status=status,
                last_error=None if error is None else error.value,
                delivered_at=now if error is None else None,
                # Ends the lease: due again when the retry is (by the database's clock, as the lease).
                next_attempt_at=None if delay is None else db_now(delay),
            )
        )
        disabled_since = endpoints.record(s, url, ok=error is None, now=now)
    if disabled_since is not None:
        log.error("notify: %s failed every delivery since %s: no longer called", _host(url), disabled_since)
        alerts.endpoint_disabled(svc, url, disabled_since)
    if error is None:
        return Outcome(Step.DONE)
    assert error is not None
    if delay is None:
        log.error("notify: giving up on job %s %s after %d attempts (%s)", job_id, event, attempt, error)
        return Outcome(Step.FAILED, detail=error.value)
    log.warning(
        "notify: job %s %s to %s failed (%s), retry in %.0f s", job_id, event, _host(url), error, delay
    )
    # The retry message lands a little after the row is due, whatever the hosts' clocks say.
    return Outcome(Step.RETRY, retry_in=delay + RETRY_MARGIN_SECONDS, detail=error.value)


def take_lease(s: Session, note_id: int, seconds: float) -> bool:
    """Lease a due, undelivered notification row to this attempt for `seconds`; False when a live
    lease (another attempt in flight) or a retry not yet due holds it."""
    result = s.execute(
        update(Notification)
        .where(
            Notification.id == note_id,
            Notification.delivered_at.is_(None),
            or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= db_now()),
        )
        .values(next_attempt_at=db_now(seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def _notification(s: Session, job_id: str, event: str) -> Notification:
    query = select(Notification).where(Notification.job_id == job_id, Notification.event == event)
    note = s.scalar(query)
    if note is not None:
        return note
    try:
        with s.begin_nested():
            note = Notification(job_id=job_id, event=event)
            s.add(note)
            s.flush()
    except IntegrityError:
        # A concurrent run created it first.
        return s.scalars(query).one()
    return note


def _host(url: str) -> str:
    # Logs name the host only: a webhook URL may carry a token in its path or query.
    return urlsplit(url).hostname or "?"


def register(app: Celery) -> Schedule:
    """The notify task; the reconciler (worker.repair) re-sends deliveries whose message was lost."""
    # Imported here, not at the top: the web app imports this package without loading Celery.
    from worker.tasks import NOTIFY_TASK, KlingTask

    @app.task(bind=True, base=KlingTask, shared=False, name=NOTIFY_TASK.name)
    def notify_task(self: KlingTask, job_id: str) -> str:
        with log_context(job_id=job_id):
            return self.finish(notify_job(self.services, job_id))

    return {}
