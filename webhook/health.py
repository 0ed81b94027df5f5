"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its dependencies answer)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Flask, current_app
from sqlalchemy import text

from models.settings import Settings
from webhook.db import sessions

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

ReadinessCheck = Callable[[], None]
_CHECKS = "kling.readiness_checks"


def register_readiness_check(app: Flask, name: str, check: ReadinessCheck) -> None:
    """Add a check to `/readyz`; it raises when its dependency is not usable."""
    app.extensions.setdefault(_CHECKS, {})[name] = check


def database_check() -> None:
    with sessions()() as session:
        session.execute(text("SELECT 1"))


def broker_check(settings: Settings) -> ReadinessCheck:
    def check() -> None:
        from kombu.connection import Connection

        from worker.factory import REQUEST_BROKER_OPTIONS

        # Socket timeouts too: a broker that accepts and never answers would hang the probe.
        conn = Connection(  # type: ignore[no-untyped-call]
            settings.celery_broker_url, connect_timeout=2, transport_options=dict(REQUEST_BROKER_OPTIONS)
        )
        with conn:
            conn.ensure_connection(max_retries=1, timeout=2)  # type: ignore[no-untyped-call]

    return check


def s3_check(settings: Settings) -> ReadinessCheck:
    def check() -> None:
        # The same client the API presigns with, so a test or the demo swapping it is honoured.
        from webhook.api import s3_client

        s3_client().head_bucket(Bucket=settings.s3_bucket)

    return check


def init_app(app: Flask, settings: Settings) -> None:
    register_readiness_check(app, "database", database_check)
    register_readiness_check(app, "broker", broker_check(settings))
    register_readiness_check(app, "s3", s3_check(settings))
    app.register_blueprint(bp)


@bp.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@bp.get("/readyz")
def readyz() -> tuple[dict[str, object], int]:
    results: dict[str, str] = {}
    checks: dict[str, ReadinessCheck] = current_app.extensions.get(_CHECKS, {})
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 (any failure means not ready)
            # Only the type: messages can carry URLs with credentials.
            log.warning("readiness check %s failed: %s", name, type(exc).__name__)
            results[name] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in results.values())
    return {"status": "ok" if ready else "unavailable", "checks": results}, 200 if ready else 503
