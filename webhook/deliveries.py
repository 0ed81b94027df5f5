"""Downstream deliveries of a job over HTTP (API token): `GET /v1/jobs/{id}/deliveries` (each
subscribed event's state and every attempt) and `POST /v1/jobs/{id}/deliveries/{event}/replay`
(send it again on a fresh retry schedule; enables a disabled endpoint: a person asked)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.documents import iso_utc
from models.events import EVENTS, MAX_ATTEMPTS
from models.outbox import NOTIFY, enqueue_rows
from models.tables import DeliveryAttempt, Job, Notification, WebhookEndpoint
from webhook.api import ApiError, api_blueprint, known_job_id
from webhook.auth import caller_tenant
from webhook.db import autocommit_sessions, sessions
from webhook.views import ViewResult
from worker import endpoints
from worker.notify import events_due

bp = api_blueprint("deliveries", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def delivery_state(note: Notification) -> str:
    if note.delivered_at is not None:
        return "delivered"
    if note.last_error == "disabled":
        return "disabled"
    return "failed" if note.attempts >= MAX_ATTEMPTS else "pending"


def _deliveries(s: Session, job: Job) -> dict[str, Any]:
    notes = s.scalars(
        select(Notification).where(Notification.job_id == job.id).order_by(Notification.id)
    ).all()
    attempts: dict[int, list[dict[str, Any]]] = {note.id: [] for note in notes}
    if notes:
        rows = s.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.notification_id.in_(list(attempts)))
            .order_by(DeliveryAttempt.id)
        )
        for a in rows:
            attempts[a.notification_id].append(
                {
                    "attempt": a.attempt,
                    "at": iso_utc(a.at),
                    "status": a.status,
                    "error": a.error,
                    "latency_ms": a.latency_ms,
                }
            )
    endpoint = None
    if job.webhook_url:
        row = s.get(WebhookEndpoint, endpoints.url_key(job.webhook_url))
        endpoint = {
            "host": urlsplit(job.webhook_url).hostname,
            "failing_since": iso_utc(row.failing_since) if row else None,
            "disabled_at": iso_utc(row.disabled_at) if row else None,
        }
    return {
        "endpoint": endpoint,
        "deliveries": [
            {
                "event": note.event,
                "state": delivery_state(note),
                "attempts": note.attempts,
                "last_status": note.last_status,
                "last_error": note.last_error,
                "delivered_at": iso_utc(note.delivered_at),
                "next_attempt_at": iso_utc(note.next_attempt_at),
                "attempt_log": attempts[note.id],
            }
            for note in notes
        ],
    }


def _job(s: Session, job_id: str) -> Job:
    job = s.get(Job, known_job_id(job_id))
    if job is None or caller_tenant() not in (None, job.tenant):
        raise ApiError(404, "unknown job")
    return job


@bp.get("/v1/jobs/<job_id>/deliveries")
def list_deliveries(job_id: str) -> ViewResult:
    with autocommit_sessions() as read, read() as s:
        return _deliveries(s, _job(s, job_id)), 200


@bp.post("/v1/jobs/<job_id>/deliveries/<event>/replay")
def replay(job_id: str, event: str) -> ViewResult:
    if event not in EVENTS:
        raise ApiError(404, f"unknown event; one of {', '.join(EVENTS)}")
    with session_scope(sessions()) as s:
        job = _job(s, job_id)
        if not job.webhook_url:
            raise ApiError(409, "the job has no webhook_url")
        if event not in events_due(s, job):
            raise ApiError(409, f"the job has no {event} to deliver (not reached, or not subscribed)")
        note = s.scalar(
            select(Notification).where(Notification.job_id == job.id, Notification.event == event)
        )
        if note is None:
            note = Notification(job_id=job.id, event=event)
            s.add(note)
        # A fresh schedule: attempts count from 1 again (earlier ones stay in the log), and the
        # reconciler's window of re-sends starts now.
        note.attempts, note.delivered_at, note.next_attempt_at = 0, None, None
        note.created_at = utcnow()
        note.last_status = note.last_error = None
        endpoints.enable(s, job.webhook_url)
        enqueue_rows(s, [(NOTIFY, [job.id])])  # published by the session's after-commit hook
        s.flush()
        found = _deliveries(s, job)
    return next(d for d in found["deliveries"] if d["event"] == event), 202
