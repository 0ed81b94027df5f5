"""The job HTTP API (`/v1/jobs`), bearer-token protected. docs/api.md is the reference.

- `POST /v1/jobs` validates with the provider's rules (`kling.validation`), writes the job and its
  outbox row in one transaction; its session's after-commit hook publishes that row. A broker
  outage is only logged: the row stays in the outbox for the beat relay; the request succeeds.
- `Idempotency-Key`: the first request creates the job (202); a later request with that key and
  the same body answers 200 with the same job, one with another body 422.
- Lists are newest first with keyset pagination on `(created_at, id)` (the table's index).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from kling.errors import FieldError, ValidationError
from kling.kinds import DEFAULT_KIND, kind_for
from models.base import utcnow
from models.db import session_scope
from models.documents import job_document, job_documents, job_select
from models.enums import ImageStatus, JobStatus
from models.events import parse_webhook_events
from models.job_control import deadline_from
from models.logging import log_context
from models.priorities import parse_priority
from models.settings import Settings
from models.statemachine import create_job
from models.tables import Image, Job, of_tenant
from webhook.auth import (
    api_token,
    caller_tenant,
    is_visible,
    require_token,
    tenant_of_create,
    tenant_scope,
)
from webhook.body import is_json_media_type, unstorable
from webhook.db import app_settings, autocommit_sessions, sessions
from webhook.job_fields import split_body
from webhook.views import ViewResult

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)

S3_CLIENT = "kling.s3"
# A 10 MB image is ~13.4 MB once base64-encoded.
API_MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_IDEMPOTENCY_KEY = 255
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
PRESIGN_SECONDS = 3600


class ConfigurationError(RuntimeError):
    """The app cannot start with these settings."""


class ApiError(Exception):
    """An error answer: `{"error": message, "fields": [...]}` with an HTTP status."""

    def __init__(self, status: int, message: str, fields: Sequence[FieldError] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.fields = status, message, list(fields)

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.fields:
            out["fields"] = [{"field": f.field, "rule": f.rule, "message": f.message} for f in self.fields]
        return out


# --- app wiring ---------------------------------------------------------------------------------
def init_app(app: Flask, settings: Settings) -> None:
    check_settings(settings)
    app.register_blueprint(bp)


def check_settings(settings: Settings) -> None:
    if not api_token(settings) and not settings.demo_mode:
        raise ConfigurationError(
            "API_TOKEN is not set: the job API needs a bearer token. Set API_TOKEN "
            "(e.g. `export API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`)."
        )


def s3_client() -> Any:
    client = current_app.extensions.get(S3_CLIENT)
    if client is None:
        from worker.s3 import s3_client_from_settings

        client = current_app.extensions[S3_CLIENT] = s3_client_from_settings(app_settings())
    return client


def presigned_url(bucket: str, key: str) -> str:
    url: str = s3_client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
    )
    return url


@bp.before_request
def _before() -> ViewResult | None:
    request.max_content_length = API_MAX_BODY_BYTES
    return require_token()


@bp.after_request
def no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> ViewResult:
    return exc.body(), exc.status


@bp.errorhandler(DataError)
def _bad_value(exc: DataError) -> ViewResult:
    # The database refused a value the checks above let through: the client's input, not our bug.
    log.warning("API request refused by the database (%s)", type(exc.orig).__name__)
    return {"error": "a value in the request cannot be stored"}, 400


@bp.errorhandler(OperationalError)
@bp.errorhandler(PoolTimeoutError)
def database_unavailable(exc: Exception) -> ViewResult:
    log.error("API request failed, database unavailable (%s)", type(exc).__name__)
    return {"error": "database unavailable, retry later"}, 503, {"Retry-After": "5"}


# --- views --------------------------------------------------------------------------------------
@bp.post("/v1/jobs")
def create() -> ViewResult:
    settings = app_settings()
    body = _json_object()
    deadline, deadline_errors = deadline_from(body.pop("deadline_seconds", None), utcnow())
    events_value = body.pop("webhook_events", None)
    priority, priority_errors = parse_priority(body.pop("priority", None))
    kind_name = body.pop("kind", None)
    tenant, tenant_errors = tenant_of_create(body.pop("tenant", None))
    provider, webhook_url, metadata, params, errors = split_body(body, settings)
    events, event_errors = parse_webhook_events(events_value, has_url=webhook_url is not None)
    errors += deadline_errors + event_errors + priority_errors + tenant_errors
    key = _idempotency_key()
    try:
        kind = kind_for(DEFAULT_KIND if kind_name is None else kind_name)
    except ValidationError as exc:
        # Which rules apply depends on the kind: without one, only the other checks' errors too.
        raise ApiError(422, "invalid request", errors + exc.errors) from None
    errors += kind.validate(params, provider)
    # Kling holds a task's slots until it ends: a job bigger than every account could never start.
    most = max(a.concurrency for a in settings.accounts)
    if not errors and (slots := kind.slots(params)) > most:
        name = "the largest account concurrency" if settings.kling_accounts_file else "KLING_CONCURRENCY"
        field = _slot_field(kind.name, params)
        errors.append(
            FieldError(field, "concurrency", f"needs {slots} slots; at most {name}={most} can be held")
        )
    cap = tenant.max_slots if tenant is not None else None
    if not errors and tenant is not None and cap is not None and (slots := kind.slots(params)) > cap:
        too_many = f"needs {slots} slots; tenant {tenant.name} may hold at most {cap}"
        errors.append(FieldError(_slot_field(kind.name, params), "max_slots", too_many))
    if errors or tenant is None:  # no tenant: its error is in `errors`
        raise ApiError(422, "invalid request", errors)

    # The session's after-commit hook publishes the submit row create_job wrote.
    with session_scope(sessions()) as session:
        result = create_job(
            session,
            params,
            provider=provider,
            kind=kind.name,
            webhook_url=webhook_url,
            metadata=metadata,
            idempotency_key=key,
            deadline_at=deadline,
            webhook_events=events,
            priority=priority,
            tenant=tenant.name,
            # One account: the pump can place any job (docs/architecture.md, "Message priorities").
            defer_when_deep=len(settings.accounts) == 1,
        )
        job_id, created = result.job.id, result.created
        earlier = result.job
        if not created and (
            earlier.provider,
            earlier.kind,
            earlier.params,
            earlier.webhook_url,
            earlier.meta,
            earlier.priority,
            earlier.webhook_events,
        ) != (
            provider,
            kind.name,
            params,
            webhook_url,
            metadata,
            priority,
            events,
        ):
            raise ApiError(
                422,
                "Idempotency-Key reused with a different request",
                [FieldError("Idempotency-Key", "reused", "was first used with another body; use a new key")],
            )
    with log_context(job_id=job_id):
        if created:
            log.info("job created: provider=%s kind=%s slots=%s", provider, kind.name, result.job.slots)
        else:
            log.info("job returned for a repeated Idempotency-Key")
    with autocommit_sessions() as read, read() as session:
        payload = _one_document(session, job_id)
    return payload, 202 if created else 200, {"Location": f"/v1/jobs/{job_id}"}


LIST_PARAMETERS = ("status", "tenant", "limit", "cursor")


@bp.get("/v1/jobs")
def list_jobs() -> ViewResult:
    for name in request.args:
        if name not in LIST_PARAMETERS:
            raise _bad_query(
                name or "(empty name)", "unknown", f"unknown parameter; use {', '.join(LIST_PARAMETERS)}"
            )
    status = request.args.get("status")
    if status is not None and status not in JobStatus.__members__.values():
        raise _bad_query("status", "enum", f"must be one of {', '.join(JobStatus)}")
    limit = _limit(request.args.get("limit"))
    cursor = _decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None

    stmt = tenant_scope(job_select())
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if (tenant := request.args.get("tenant")) is not None:
        stmt = stmt.where(of_tenant(tenant))
    if cursor is not None:
        at, last_id = cursor
        stmt = stmt.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.id < last_id)))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    with autocommit_sessions() as read, read() as session:
        docs = job_documents(session, stmt, waiting=_waiting())
    more = len(docs) > limit
    docs = docs[:limit]
    next_cursor = _encode_cursor(docs[-1]) if more and docs else None
    return {"jobs": docs, "next_cursor": next_cursor}, 200


@bp.get("/v1/jobs/<job_id>")
def show(job_id: str) -> ViewResult:
    with autocommit_sessions() as read, read() as session:
        return _one_document(session, _job_id(job_id), _waiting(), tenant=caller_tenant()), 200


@bp.get("/v1/jobs/<job_id>/images/<int:index>")
def image(job_id: str, index: int) -> ViewResult | Response:
    job_id = _job_id(job_id)
    with autocommit_sessions() as read, read() as session:
        found = session.execute(
            select(Image.status, Image.s3_bucket, Image.s3_key).where(
                Image.job_id == job_id, Image.index == index
            )
        ).first()
        if not is_visible(session, job_id) or (
            found is None and session.scalar(select(Job.id).where(Job.id == job_id)) is None
        ):
            raise ApiError(404, "unknown job")
    if found is None:
        raise ApiError(404, f"job {job_id} has no image {index}")
    if found.status != ImageStatus.ARCHIVED or not found.s3_bucket or not found.s3_key:
        raise ApiError(409, f"image {index} of job {job_id} is not archived (status {found.status})")
    response = Response(status=302)
    response.headers["Location"] = presigned_url(found.s3_bucket, found.s3_key)
    return response


# --- helpers ------------------------------------------------------------------------------------
def _json_object() -> dict[str, Any]:
    if not is_json_media_type(request.mimetype):
        raise ApiError(
            415,
            "the body must be JSON",
            [FieldError("Content-Type", "media_type", "must be application/json")],
        )
    raw = request.get_data(cache=False)
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(
            400, "malformed JSON body", [FieldError("(body)", "json", "is not valid JSON")]
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            400, "the body must be a JSON object", [FieldError("(body)", "type", "must be an object")]
        )
    problem = unstorable(body)
    if problem:
        raise ApiError(400, problem.message, [problem])
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _slot_field(kind: str, params: Mapping[str, Any]) -> str:
    """The request field that sets a task's slot weight: `series_amount` for an omni series, else `n`."""
    if kind == "omni_image" and params.get("result_type") == "series":
        return "series_amount"
    return "n" if kind in ("image", "omni_image", "expand", "multi_image") else "kind"


def _job_id(value: str) -> str:
    """Job ids are UUIDs; anything else is unknown (and never reaches SQL)."""
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else _unknown()
    except ValueError:
        return _unknown()


def _unknown() -> str:
    raise ApiError(404, "unknown job")


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY or "\x00" in key:
        rule = f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        raise ApiError(400, f"Idempotency-Key {rule}", [FieldError("Idempotency-Key", "length", rule)])
    return key


def _bad_query(name: str, rule: str, message: str) -> ApiError:
    return ApiError(400, f"invalid query parameter {name!r}", [FieldError(name, rule, message)])


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    # isascii: str.isdigit() accepts digits such as "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _bad_query("limit", "range", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _encode_cursor(doc: Mapping[str, Any]) -> str:
    raw = json.dumps([doc["created_at"], doc["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_CURSOR = 256  # ours are ~90 characters


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("cursor too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, job_id = json.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None or not isinstance(job_id, str) or len(job_id) != 36:
            raise ValueError("bad cursor")
        parsed = parsed.astimezone(UTC)  # a year-1 time east of UTC overflows here, not in SQL
        job_id = str(uuid.UUID(job_id))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError, RecursionError):
        raise _bad_query("cursor", "cursor", "is not a cursor returned by this API") from None
    return parsed, job_id


def _waiting() -> Any:
    from webhook.accounts import waiting_lookup  # here: that module imports this one

    return waiting_lookup()


def _one_document(
    session: Session, job_id: str, waiting: Any = None, *, tenant: str | None = None
) -> dict[str, Any]:
    """`waiting`: see `job_documents`; creating a job answers without it (no Redis call there).
    `tenant`: another tenant's job is unknown."""
    doc = job_document(session, job_id, waiting=waiting, tenant=tenant)
    if doc is None:
        raise ApiError(404, "unknown job")
    return doc


def api_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint of more /v1 routes: the API token, `ApiError` answers, 503 when the database
    is down (webhook/job_control.py, webhook/deliveries.py)."""
    more = Blueprint(name, import_name)
    more.before_request(require_token)
    more.register_error_handler(ApiError, _api_error)
    more.register_error_handler(OperationalError, database_unavailable)
    more.register_error_handler(PoolTimeoutError, database_unavailable)
    return more


# For the other /v1/jobs views (webhook/job_control.py).
known_job_id, idempotency_key, one_document = _job_id, _idempotency_key, _one_document

__all__ = [
    "S3_CLIENT",
    "ApiError",
    "ConfigurationError",
    "api_blueprint",
    "bp",
    "check_settings",
    "database_unavailable",
    "idempotency_key",
    "init_app",
    "known_job_id",
    "no_store",
    "one_document",
    "presigned_url",
    "require_token",
]
