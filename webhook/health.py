"""Liveness, readiness and a deep dependency report, each for a different caller.

- `GET /healthz`: liveness; the process answers (no I/O). Restart the container when it fails.
- `GET /readyz`: readiness = the database only (`SELECT 1`, bounded by the webhook engine's 2 s
  answer timeout). Without the database no request can be served; an S3 or broker blip must not
  take every replica out of the load balancer at once (callbacks and the API work through both:
  the outbox holds messages, the archiver retries).
- `GET /healthz?deep=1`: every dependency (database, broker, S3, and checks registered with
  `register_dependency_check`) with its state, 503 when one is down; for people and monitoring,
  never for a liveness or readiness probe. Computed at most every `DEEP_MAX_AGE_SECONDS` per
  process, so anyone scraping it cannot make us open broker and S3 connections in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import Blueprint, Flask, current_app, request
from sqlalchemy import text

from models.settings import Settings
from webhook.db import sessions

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

DependencyCheck = Callable[[], None]
_CHECKS = "kling.dependency_checks"
_DEEP = "kling.deep_health"
DEEP_MAX_AGE_SECONDS = 10.0
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def register_dependency_check(app: Flask, name: str, check: DependencyCheck) -> None:
    """Add a check to `/healthz?deep=1`; it raises when its dependency is not usable."""
    app.extensions.setdefault(_CHECKS, {})[name] = check


def database_check() -> None:
    with sessions()() as session:
        session.execute(text("SELECT 1"))


def broker_check(settings: Settings) -> DependencyCheck:
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


def s3_check(settings: Settings) -> DependencyCheck:
    def check() -> None:
        # The same client the API presigns with, so a test or the demo swapping it is honoured.
        from webhook.api import s3_client

        s3_client().head_bucket(Bucket=settings.s3_bucket)

    return check


def run_checks(checks: dict[str, DependencyCheck]) -> dict[str, str]:
    """Each check's state: `ok` or `error: <exception type>` (messages can carry URLs with credentials)."""
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 (any failure means that dependency is down)
            log.warning("dependency check %s failed: %s", name, type(exc).__name__)
            results[name] = f"error: {type(exc).__name__}"
    return results


def report(results: dict[str, str]) -> tuple[dict[str, object], int]:
    ok = all(v == "ok" for v in results.values())
    return {"status": "ok" if ok else "unavailable", "checks": results}, 200 if ok else 503


class DeepReport:
    """The deep report, recomputed when older than `max_age`; one thread computes, others wait."""

    def __init__(self, max_age: float = DEEP_MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._taken_at: float | None = None
        self._results: dict[str, str] = {}

    def get(self, checks: dict[str, DependencyCheck]) -> dict[str, str]:
        with self._lock:
            now = self.clock()
            if self._taken_at is None or not 0 <= now - self._taken_at < self.max_age:
                self._results = run_checks(checks)
                self._taken_at = now
            return dict(self._results)


def init_app(app: Flask, settings: Settings) -> None:
    register_dependency_check(app, "database", database_check)
    register_dependency_check(app, "broker", broker_check(settings))
    register_dependency_check(app, "s3", s3_check(settings))
    app.extensions[_DEEP] = DeepReport()
    app.register_blueprint(bp)


@bp.get("/healthz")
def healthz() -> tuple[dict[str, object], int]:
    if request.args.get("deep", "").strip().lower() in TRUE_WORDS:
        deep: DeepReport = current_app.extensions[_DEEP]
        return report(deep.get(current_app.extensions.get(_CHECKS, {})))
    return {"status": "ok"}, 200


@bp.get("/readyz")
def readyz() -> tuple[dict[str, object], int]:
    return report(run_checks({"database": database_check}))


__all__ = [
    "DEEP_MAX_AGE_SECONDS",
    "DeepReport",
    "bp",
    "init_app",
    "register_dependency_check",
    "report",
    "run_checks",
]
