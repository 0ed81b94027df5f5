"""`POST /callbacks/kling/<job_id>/<token>`: the provider's status hints, applied through the state machine.

Checks, in order, each answering before anything is written:
1. body size over MAX_CONTENT_LENGTH (1 MiB) -> 413;
2. per-job token (HMAC-SHA256 of the job id, constant-time) -> 403. Done before any database
   access, so the answer cannot reveal whether a job exists: only holders of CALLBACK_SECRET can
   mint a valid token, and only they can learn (404) that a job is unknown;
3. Standard Webhooks signature on the raw body when KLING_WEBHOOK_SECRET is set -> 401;
4. body shape (`kling.callbacks.parse_callback`, both shapes) -> 400 with a message;
5. unknown job -> 404; a task that is not the job's -> 409;
6. state machine, all writes or none -> 200 {"outcome": applied|duplicate|stale|unconfirmed}. On
   PostgreSQL one statement makes them (`apply_callback`), unless the job changed since it was
   read; else, and on SQLite, one transaction holding the job's row lock.
The database being unreachable answers 503 so a retrying sender tries again.

Trust: the token proves only that the sender knows the callback URL. Without KLING_WEBHOOK_SECRET
(no signature to check) a report that would end the provider task (`succeed`, `failed`) or set
the job's images is not applied: the event is stored as `unconfirmed`, the answer is 200
{"outcome": "unconfirmed"}, and a `confirm_job` outbox row (published after the commit) has a
worker look the task up at the provider (`worker.polling.confirm`) and apply what the provider
says. No provider call is made inside the request. `submitted`/`processing` hints, duplicates and
stale reports are applied as before; signed callbacks are trusted and applied directly.
"""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, request
from prometheus_client import Counter
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import RequestEntityTooLarge

from kling.callbacks import parse_callback, verify_callback_signature
from kling.errors import CallbackError, SignatureError
from kling.types import Task
from models.enums import EventOutcome, TransitionSource
from models.logging import log_context
from models.statemachine import (
    ApplyResult,
    JobNotFound,
    TaskMismatch,
    apply_callback,
    apply_provider_task,
)
from models.tables import CallbackEvent
from models.tokens import check_callback_token
from webhook.db import (
    app_settings,
    provider_task_ended,
    publish_outbox,
    request_connection,
    single_statements,
    transaction,
)
from webhook.views import ViewResult

log = logging.getLogger(__name__)
bp = Blueprint("callbacks", __name__)

CALLBACKS = Counter("kling_callbacks_total", "Provider callbacks received, by outcome.", ["outcome"])

# Stored with each event for debugging; signatures and auth headers are left out.
KEPT_HEADERS = ("content-type", "content-length", "user-agent", "webhook-id", "webhook-timestamp")


def dedupe_key(webhook_id: str | None, body: bytes) -> str:
    if webhook_id and len(webhook_id) <= 200:
        return f"webhook-id:{webhook_id}"
    if webhook_id:  # longer than the column holds: its digest identifies it as well
        return f"webhook-id-sha256:{hashlib.sha256(webhook_id.encode('utf-8', 'surrogatepass')).hexdigest()}"
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def _reject(status: int, reason: str, job_id: str) -> ViewResult:
    CALLBACKS.labels(outcome=EventOutcome.REJECTED.value).inc()
    log.warning("callback rejected: job=%s status=%d reason=%s", job_id, status, reason)
    return {"error": reason}, status


def _apply(conn: Connection, job_id: str, task: Task, event: CallbackEvent, *, signed: bool) -> ApplyResult:
    if not signed and task.status.is_final:
        # Possibly a final state nobody vouched for: decided under the row lock, and stored as
        # `unconfirmed` with a lookup queued if it would end the task or set images.
        with transaction(conn):
            return apply_provider_task(
                conn, job_id, task, source=TransitionSource.CALLBACK.value, event=event, trusted=False
            )
    if conn.dialect.name == "postgresql":
        with single_statements(conn):
            result = apply_callback(conn, job_id, task, event=event)
        if result is not None:
            return result
        # The job changed between the read and the write (a concurrent callback, a poll, a
        # worker), or the report fills in images: decide again under the row lock.
    with transaction(conn):
        return apply_provider_task(conn, job_id, task, source=TransitionSource.CALLBACK.value, event=event)


@bp.post("/callbacks/kling/<job_id>/<token>")
def receive(job_id: str, token: str) -> ViewResult:
    with log_context(job_id=job_id):
        return _receive(job_id, token)


def _receive(job_id: str, token: str) -> ViewResult:
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        CALLBACKS.labels(outcome=EventOutcome.REJECTED.value).inc()
        log.warning("callback rejected: job=%s status=413 reason=body too large", job_id)
        raise

    settings = app_settings()
    secret = settings.callback_secret
    if secret is None or not check_callback_token(secret.get_secret_value(), job_id, token):
        return _reject(403, "invalid callback token", job_id)

    webhook_secret = settings.kling_webhook_secret
    signed = webhook_secret is not None
    if webhook_secret is not None:
        try:
            verify_callback_signature(webhook_secret.get_secret_value(), dict(request.headers), body)
        except SignatureError as exc:
            return _reject(401, f"invalid signature: {exc.message}", job_id)

    try:
        task = parse_callback(body)
    except CallbackError as exc:
        return _reject(400, exc.message, job_id)

    key = dedupe_key(request.headers.get("webhook-id"), body)
    headers = {name: value for name in KEPT_HEADERS if (value := request.headers.get(name)) is not None}
    event = CallbackEvent(dedupe_key=key, headers=headers, body=body.decode("utf-8", errors="replace"))
    try:
        with request_connection() as conn:
            result = _apply(conn, job_id, task, event, signed=signed)
            # Only a final provider state enqueues work (archive, release, notify): a `processing`
            # callback costs no second step.
            if result.changed and task.status.is_final:
                provider_task_ended(conn, job_id, result.outbox)
        if result.outcome is EventOutcome.UNCONFIRMED:
            publish_outbox(result.outbox)  # the lookup goes to a worker: no provider call in here
    except JobNotFound:
        return _reject(404, "unknown job", job_id)
    except TaskMismatch:
        return _reject(409, "task does not belong to this job", job_id)
    except (OperationalError, PoolTimeoutError) as exc:
        CALLBACKS.labels(outcome="unavailable").inc()
        log.error("callback not applied, database unavailable: job=%s (%s)", job_id, type(exc).__name__)
        return {"error": "database unavailable, retry later"}, 503
    else:
        outcome = result.outcome.value
        log.info(
            "callback %s: job=%s task=%s provider_status=%s job_status=%s",
            outcome,
            job_id,
            task.task_id,
            task.status.value,
            result.job_status.value,
        )
    CALLBACKS.labels(outcome=outcome).inc()
    return {"outcome": outcome}, 200
