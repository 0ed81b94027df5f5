"""The app's database handle: one session factory per app, reachable from request handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_sessionmaker
from models.settings import Settings

_SESSIONS = "kling.sessions"
_SETTINGS = "kling.settings"
_PUBLISH = "kling.publish"

log = logging.getLogger(__name__)


def init_app(app: Flask, settings: Settings, session_factory: sessionmaker[Session] | None = None) -> None:
    # Engines connect lazily, so an app pointed at a database that is down still starts (and answers 503).
    if session_factory is None:
        session_factory = make_sessionmaker(make_engine(settings.database_url))
    app.extensions[_SESSIONS] = session_factory
    app.extensions[_SETTINGS] = settings
    app.extensions.setdefault(_PUBLISH, _LazyCeleryPublisher(settings))


def sessions() -> sessionmaker[Session]:
    factory: sessionmaker[Session] = current_app.extensions[_SESSIONS]
    return factory


def app_settings() -> Settings:
    settings: Settings = current_app.extensions[_SETTINGS]
    return settings


class _LazyCeleryPublisher:
    """Sends outbox rows to the broker; the Celery app is built on first use, not at import."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._publish: Callable[[str, list[Any]], None] | None = None
        self._lock = threading.Lock()

    def __call__(self, name: str, args: list[Any]) -> None:
        with self._lock:
            if self._publish is None:
                from worker.factory import make_celery
                from worker.outbox import QUICK_RETRY, celery_publisher

                self._publish = celery_publisher(make_celery(self._settings), retry_policy=QUICK_RETRY)
        self._publish(name, args)


def set_publisher(app: Flask, publish: Callable[[str, list[Any]], None] | None) -> None:
    """Replace how outbox rows are published (tests, the demo); None disables publishing here."""
    app.extensions[_PUBLISH] = publish


def publish_outbox() -> None:
    """Publish what the request just committed to the outbox. Never fails the request: rows that
    cannot go out now stay in the outbox for the worker's relay."""
    publish = current_app.extensions.get(_PUBLISH)
    if publish is None:
        return
    from worker.outbox import relay

    try:
        relay(sessions(), publish)
    except Exception as exc:  # noqa: BLE001
        log.warning("outbox publish after commit failed, the relay will retry: %s", type(exc).__name__)
