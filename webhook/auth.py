"""Who is asking: the operator (`API_TOKEN`, sees every tenant's jobs) or a tenant (its own key,
sees its own jobs only: another tenant's job is answered 404, as if it did not exist).

`require_token` is every /v1 blueprint's `before_request`; the views ask `caller_tenant()`.
"""

from __future__ import annotations

import hmac
from typing import Any, NamedTuple

from flask import g, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from kling.errors import FieldError
from models.settings import Settings
from models.tables import DEFAULT_TENANT, Job, Tenant, of_tenant
from models.tenants import KEY_PREFIX, tenant_for_key
from webhook.db import app_settings, autocommit_sessions
from webhook.views import ViewResult

LOOPBACK = ("127.0.0.1", "::1")
OPERATOR = None  # caller_tenant() of the operator's token


def api_token(settings: Settings) -> str:
    return settings.api_token.get_secret_value() if settings.api_token is not None else ""


def require_token() -> ViewResult | None:
    """`before_request` hook: None when the request carries the API token or a tenant's key (and
    `g.tenant` then says whose), else the 401 answer."""
    g.tenant = OPERATOR
    expected = api_token(app_settings())
    scheme, _, provided = request.headers.get("Authorization", "").partition(" ")
    provided = provided.strip() if scheme.lower() == "bearer" else ""
    if expected and provided and hmac.compare_digest(provided.encode(), expected.encode()):
        return None
    if provided.startswith(KEY_PREFIX):
        with autocommit_sessions() as read, read() as session:
            tenant = tenant_for_key(session, provided)
        if tenant is None:
            return _unauthorized("invalid bearer token")
        g.tenant = tenant
        return None
    if not expected:
        # Only reachable in demo mode (api.check_settings): open to this machine only.
        if request.remote_addr in LOOPBACK:
            return None
        return _unauthorized("the API is only open to localhost in demo mode")
    return _unauthorized("invalid bearer token" if provided else "missing bearer token")


def _unauthorized(message: str) -> ViewResult:
    return {"error": message}, 401, {"WWW-Authenticate": 'Bearer realm="kling-orchestrator"'}


def caller_tenant() -> str | None:
    """The tenant whose key the request carries; None for the operator."""
    tenant: str | None = g.get("tenant", OPERATOR)
    return tenant


def is_visible(session: Session, job_id: str) -> bool:
    """Whether the caller may see the job (False also when there is no such job, for a tenant)."""
    tenant = caller_tenant()
    if tenant is OPERATOR:
        return True
    return session.scalar(select(Job.tenant).where(Job.id == job_id)) == tenant


def forbidden_to_tenants() -> ViewResult | None:
    """`before_request` hook of operator-only routes (accounts: they are the operator's business)."""
    if caller_tenant() is OPERATOR:
        return None
    return {"error": "this route is for the operator's API_TOKEN, not a tenant key"}, 403


def tenant_scope(stmt: Any) -> Any:
    """`stmt` (selecting from jobs) narrowed to the caller's own jobs."""
    tenant = caller_tenant()
    return stmt if tenant is OPERATOR else stmt.where(of_tenant(tenant))


class NewJobTenant(NamedTuple):
    name: str
    max_slots: int | None


def tenant_of_create(value: Any) -> tuple[NewJobTenant | None, list[FieldError]]:
    """The tenant a new job is for (the body's `tenant`): a tenant key's own; the operator may name
    any (default `default`). None with the errors when refused. Known tenants come from the
    worker view's table cache (re-read every 5 s): no query per create."""
    caller = caller_tenant()
    if value is not None and not isinstance(value, str):
        return None, [FieldError("tenant", "type", "must be a string")]
    if value is not None and caller is not OPERATOR and value != caller:
        return None, [FieldError("tenant", "tenant", "a tenant key creates jobs for its own tenant only")]
    # `is None`, not `or`: an empty name is no tenant (422), not the default one.
    name = value if value is not None else caller if caller is not OPERATOR else DEFAULT_TENANT
    from webhook.accounts import services  # here: that module imports the API's

    known = services().tenancy.limits().get(name)
    if known is not None:
        return NewJobTenant(name, known.max_slots), []
    with autocommit_sessions() as read, read() as session:
        tenant = session.get(Tenant, name)  # made in the last seconds, or none
        found = None if tenant is None else NewJobTenant(tenant.name, tenant.max_slots)
    if found is None:
        return None, [FieldError("tenant", "unknown", f"no tenant {name!r}")]
    return found, []
