"""The dashboard: `GET /` serves a static page; its data comes from `GET /v1/dashboard` (bearer token).

The page itself holds no data and needs no token. The browser asks for the token once (or takes it
from the URL fragment, `/#token=...`, which browsers never send to the server, so it cannot end up
in access logs), keeps it in sessionStorage, and sends it as `Authorization: Bearer` on every
refresh. Thumbnails are presigned S3 URLs made by the same code as `/v1/jobs/{id}/images/{index}`;
video outputs (`images.type = video`) play in a `<video>` element from the same kind of URL.

`/v1/dashboard` is the operator's (a tenant key gets 403). `?status=` and `?tenant=` narrow the
recent jobs (both together: a tenant's jobs in that status); `tenants` lists every tenant's name,
for the page's tenant filter.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, render_template, request
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models.documents import job_documents, job_select
from models.enums import ImageStatus, JobStatus
from models.tables import Image, Job, Tenant, of_tenant
from models.tenants import NAME_PATTERN, NAME_RULE
from webhook import api
from webhook.auth import forbidden_to_tenants
from webhook.db import autocommit_sessions
from webhook.metrics import state_snapshot
from webhook.views import ViewResult

bp = Blueprint("dashboard", __name__)
data_bp = Blueprint("dashboard_data", __name__)
data_bp.before_request(api.require_token)
data_bp.before_request(forbidden_to_tenants)
data_bp.register_error_handler(OperationalError, api.database_unavailable)
data_bp.register_error_handler(PoolTimeoutError, api.database_unavailable)
data_bp.after_request(api.no_store)

VIDEO = "video"  # `images.type` of a video output (migration 0007)
RECENT_JOBS = 50
GALLERY_IMAGES = 48
# The gallery: every archived output, and videos still only at the provider (playable from there).
ARCHIVED = and_(Image.status == ImageStatus.ARCHIVED, Image.s3_key.is_not(None))
VIDEO_AT_SOURCE = and_(Image.type == VIDEO, Image.status == ImageStatus.PENDING)


@bp.get("/")
def page() -> str:
    return render_template("dashboard.html")


@data_bp.get("/v1/dashboard")
def data() -> ViewResult:
    snapshot = state_snapshot(current_app._get_current_object())  # type: ignore[attr-defined]
    database_up = snapshot.get("kling_metrics_source_up{database}") == 1
    limiter_up = snapshot.get("kling_metrics_source_up{limiter}") == 1
    status = request.args.get("status") or None
    if status is not None and status not in JobStatus.__members__.values():
        return {"error": f"status must be one of {', '.join(JobStatus)}"}, 400
    tenant = request.args.get("tenant") or None
    if tenant is not None and not NAME_PATTERN.fullmatch(tenant):
        return {"error": f"tenant must be {NAME_RULE}"}, 400
    recent = job_select().order_by(Job.created_at.desc(), Job.id.desc()).limit(RECENT_JOBS)
    if status is not None:
        recent = recent.where(Job.status == status)
    if tenant is not None:
        recent = recent.where(of_tenant(tenant))
    with autocommit_sessions() as read, read() as session:
        jobs = job_documents(session, recent)
        tenants = list(session.scalars(select(Tenant.name).order_by(Tenant.name)))
        gallery = (
            select(Image)
            .where(or_(ARCHIVED, VIDEO_AT_SOURCE))
            .order_by(func.coalesce(Image.archived_at, Image.provider_created_at).desc(), Image.id.desc())
            .limit(GALLERY_IMAGES)
        )
        if tenant is not None:
            gallery = gallery.join(Job, Job.id == Image.job_id).where(Job.tenant == tenant)
        shown = session.scalars(gallery).all()
        payload: dict[str, Any] = {
            "counts": {
                key.split("{", 1)[1].rstrip("}"): int(value)
                for key, value in snapshot.items()
                if key.startswith("kling_jobs{")
            },
            "slots": {
                "in_use": int(snapshot["kling_slots_in_use"]) if limiter_up else None,
                "limit": int(snapshot["kling_slots_limit"]),
            },
            "images_at_risk": int(snapshot["kling_images_at_risk"]) if database_up else None,
            "accounts_not_active": _accounts_not_active(),
            "outbox_backlog": int(snapshot["kling_outbox_backlog"]) if database_up else None,
            "jobs": jobs,
            "tenants": tenants,
            "gallery": [_gallery_item(output) for output in shown],
        }
    return payload, 200


def _gallery_item(output: Image) -> dict[str, Any]:
    """One output for the gallery: the archived object's presigned URL, or for a video not
    archived yet its source URL (the page plays it from there until the copy is in S3)."""
    archived = output.status == ImageStatus.ARCHIVED and output.s3_key is not None
    url = api.presigned_url(output.s3_bucket or "", output.s3_key or "") if archived else output.source_url
    return {
        "job_id": output.job_id,
        "index": output.index,
        "type": output.type,
        "duration": output.duration,
        "archived": archived,
        "url": url,
        "href": f"/v1/jobs/{output.job_id}/images/{output.index}",
        "sha256": output.sha256,
        "bytes": output.bytes,
    }


def _accounts_not_active() -> list[dict[str, Any]] | None:
    """The banner's accounts: paused or disabled ones (None when their state is unknown)."""
    from webhook.accounts import services
    from worker.account_views import ACTIVE, account_views

    try:
        views = account_views(services(), with_units=False)
    except Exception:  # noqa: BLE001  (the rest of the page still shows)
        return None
    return [view.document() for view in views if view.state != ACTIVE]


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_blueprint(data_bp)


__all__ = ["bp", "data_bp", "init_app"]
