"""`GET /v1/accounts` (API token): every account's state, slots in use and units today, never a
credential; and the `waiting_for` of queued jobs in job documents, computed at read time."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Flask, current_app
from sqlalchemy.exc import OperationalError

from kling.kinds import DEFAULT_KIND
from webhook.auth import forbidden_to_tenants, require_token
from webhook.db import LIMITER_KEY, app_settings, sessions
from webhook.views import ViewResult
from worker.account_views import account_views, waiting_for
from worker.services import Services

log = logging.getLogger(__name__)

# The worker's view of the accounts (limiters, pause gate, disabled table), shared by requests.
SERVICES_KEY = "kling.account_services"

bp = Blueprint("accounts", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def services() -> Services:
    return services_for(current_app)


def services_for(app: Flask) -> Services:
    """The app's account view; a host that embeds the app (the demo) may set SERVICES_KEY to its
    own. An in-process limiter set on the app (no Redis) comes with an in-process pause gate."""
    svc: Services | None = app.extensions.get(SERVICES_KEY)
    if svc is None:
        from worker.accounts import LocalAccountGate
        from worker.limiter import RedisSlotLimiter

        limiter = app.extensions.get(LIMITER_KEY)
        local = limiter is not None and not isinstance(limiter, RedisSlotLimiter)
        with app.app_context():
            svc = app.extensions[SERVICES_KEY] = Services(
                app_settings(),
                sessions=sessions(),
                limiter=limiter,
                account_gate=LocalAccountGate() if local else None,
            )
    return svc


def waiting_lookup() -> Callable[..., Any]:
    """`waiting_for` by provider and kind for one request: the accounts are read once, on the
    first queued job (no Redis call for a page without one); unknown (None) when Redis does not
    answer."""
    svc = services()

    @functools.cache
    def views() -> list[Any] | None:
        try:
            return account_views(svc, with_units=False)
        except Exception as exc:  # noqa: BLE001  (the document still answers, without the reason)
            log.warning("waiting_for: accounts unavailable: %s", type(exc).__name__)
            return None

    def lookup(provider: str, kind: str = DEFAULT_KIND) -> Any:
        found = views()
        return None if found is None else waiting_for(found, provider, kind, legacy=svc.legacy)

    return lookup


@bp.before_request
def _before() -> ViewResult | None:
    return require_token() or forbidden_to_tenants()


@bp.get("/v1/accounts")
def list_accounts() -> ViewResult:
    try:
        views = account_views(services())
    except (redis.RedisError, OperationalError) as exc:
        # The states live in Redis and the database: an outage there is a 503, not a 500.
        log.warning("accounts unavailable: %s", type(exc).__name__)
        return {"error": "account states unavailable, retry later"}, 503, {"Retry-After": "5"}
    return {"accounts": [view.document() for view in views]}, 200
