"""The app's database handle: one session factory per app, reachable from request handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_sessionmaker
from models.settings import Settings

if TYPE_CHECKING:
    from models.tables import Outbox
    from worker.limiter import SlotLimiter

_SESSIONS = "kling.sessions"
_SETTINGS = "kling.settings"
_PUBLISH = "kling.publish"
# The concurrency limiter this process shares with the workers (tests and the demo set their own).
LIMITER_KEY = "kling.limiter"

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


def publish_outbox(rows: Sequence[Outbox] | None = None, *, done: Collection[str] = ()) -> None:
    """Publish what the request just committed to the outbox: `rows` when the request knows them
    (one UPDATE marks them), else every due row (the relay). Rows whose task is in `done` are only
    marked: the request did their work itself. Never fails the request: rows that cannot go out
    now stay in the outbox for the worker's relay."""
    publish = current_app.extensions.get(_PUBLISH)
    if publish is None:
        return
    from worker.outbox import publish_rows, relay

    try:
        if rows is None:
            relay(sessions(), publish)
        elif rows:
            publish_rows(sessions(), publish, rows, done=done)
    except Exception as exc:  # noqa: BLE001
        log.warning("outbox publish after commit failed, the relay will retry: %s", type(exc).__name__)


def limiter_for(app: Flask) -> SlotLimiter:
    found: SlotLimiter | None = app.extensions.get(LIMITER_KEY)
    if found is None:
        from worker.limiter import RedisSlotLimiter

        settings: Settings = app.extensions[_SETTINGS]
        found = app.extensions[LIMITER_KEY] = RedisSlotLimiter(
            settings.limiter_redis_url,
            limit=settings.kling_concurrency,
            lease_seconds=settings.slot_lease_seconds,
            key_prefix=settings.limiter_key_prefix,
        )
    return found


def provider_finished(job_id: str) -> bool:
    """A callback just committed the end of a provider task: hand its slots to the next jobs now.

    The `release_slots` outbox row does the same through a worker and stays the durable path:
    the caller marks it done only when this returns True. Doing it here saves a queue hop per slot
    hand-off, which is most of the idle time per slot.
    """
    publish = current_app.extensions.get(_PUBLISH)
    if publish is None:
        return False
    from worker.pipeline import release_slots
    from worker.services import Services

    svc = Services(app_settings(), limiter_override=limiter_for(current_app), publish=publish)
    svc.__dict__["sessions"] = sessions()
    try:
        release_slots(svc, job_id)
    except Exception as exc:  # noqa: BLE001  (the worker's release_slots task will do it)
        log.warning("releasing slots after the callback failed, the worker will: %s", type(exc).__name__)
        return False
    return True
