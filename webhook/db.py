"""The app's database handle: one session factory per app, reachable from request handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from models.db import SessionFactory, make_engine, make_sessionmaker
from models.settings import Settings

if TYPE_CHECKING:
    from models.outbox import QueuedTask
    from worker.limiter import SlotLimiter

_SESSIONS = "kling.sessions"
_SETTINGS = "kling.settings"
_PUBLISH = "kling.publish"
# How long a request waits for PostgreSQL at each step (a connect, a query, a commit). A stalled
# database costs a request at most a pool ping plus a reconnect: two of these, then a 503.
# The broker publish and the limiter have the same bound (REQUEST_BROKER_TIMEOUT_SECONDS,
# `socket_timeout` below). docs/performance.md#stalled-dependencies
DB_ANSWER_TIMEOUT_SECONDS = 2.0
LIMITER_SOCKET_TIMEOUT_SECONDS = 2.0
# The concurrency limiter this process shares with the workers (tests and the demo set their own).
LIMITER_KEY = "kling.limiter"

log = logging.getLogger(__name__)


def init_app(app: Flask, settings: Settings, session_factory: sessionmaker[Session] | None = None) -> None:
    # Engines connect lazily, so an app pointed at a database that is down still starts (and answers 503).
    if session_factory is None:
        engine = make_engine(settings.database_url, answer_timeout=DB_ANSWER_TIMEOUT_SECONDS)
        session_factory = make_sessionmaker(engine)
    app.extensions[_SESSIONS] = session_factory
    app.extensions[_SETTINGS] = settings
    app.extensions.setdefault(_PUBLISH, _LazyCeleryPublisher(settings))
    from worker.outbox import publish_after_commit

    # Outbox rows a request's session wrote (a created job) go out once it commits.
    publish_after_commit(session_factory, publish_outbox)


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
        self._app: Any = None
        self._publish: Callable[[str, list[Any]], None] | None = None
        self._lock = threading.Lock()

    def _ready(self) -> Callable[[str, list[Any]], None]:
        with self._lock:
            if self._publish is None:
                from worker.factory import make_celery
                from worker.outbox import REQUEST_RETRY, celery_publisher

                # Bounded connects and replies, one attempt: a stalled broker costs a request
                # about REQUEST_BROKER_TIMEOUT_SECONDS, and the row waits for the relay.
                self._app = make_celery(self._settings, for_requests=True)
                self._publish = celery_publisher(self._app, retry_policy=REQUEST_RETRY)
            return self._publish

    def __call__(self, name: str, args: list[Any]) -> None:
        self._ready()(name, args)

    def warm(self) -> None:
        """Build the app and open a broker connection now, in a fresh server process: done by the
        first publish instead, the imports and the connect (~100-200 ms) land on a callback."""
        self._ready()
        try:
            with self._app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:  # noqa: BLE001
            log.warning("broker not reachable at start, publishes will retry: %s", type(exc).__name__)


def warm_publisher(app: Flask) -> None:
    """Prepare the app's broker publisher (gunicorn's `post_worker_init`); no-op for test publishers."""
    warm = getattr(app.extensions.get(_PUBLISH), "warm", None)
    if warm is not None:
        warm()


def set_publisher(app: Flask, publish: Callable[[str, list[Any]], None] | None) -> None:
    """Replace how outbox rows are published (tests, the demo); None disables publishing here."""
    app.extensions[_PUBLISH] = publish


def publish_outbox(rows: Sequence[QueuedTask]) -> None:
    """Publish the outbox rows the request just committed and mark them (one UPDATE). Never fails
    the request: rows that cannot go out now stay in the outbox for the worker's relay."""
    if not has_app_context():
        return  # a session of the app's factory used outside a request (tests, scripts)
    publish = current_app.extensions.get(_PUBLISH)
    if publish is None or not rows:
        return
    from worker.outbox import publish_rows

    try:
        with autocommit_sessions() as quick:
            publish_rows(quick, publish, rows)
    except Exception as exc:  # noqa: BLE001
        log.warning("outbox publish after commit failed, the relay will retry: %s", type(exc).__name__)


def provider_task_ended(conn: Connection, job_id: str, rows: Sequence[QueuedTask]) -> None:
    """A callback just committed the end of a provider task on `conn`: hand its slots to the next
    jobs and publish the outbox rows it wrote, on the same connection. Never fails the request."""
    publish = current_app.extensions.get(_PUBLISH)
    if publish is None:
        return
    from webhook.accounts import services_for
    from worker.services import Services
    from worker.slots import hand_off_slots

    try:
        with autocommit_sessions(conn) as quick:
            svc = Services(
                app_settings(),
                sessions=quick,
                limiter=limiter_for(current_app),
                publish=publish,
                # The app's own: one Redis client for every callback, in memory when the limiter is.
                dispatch_marks=services_for(current_app).dispatch_marks,
            )
            hand_off_slots(svc, job_id, rows)
    except Exception as exc:  # noqa: BLE001
        log.warning("work after a final callback failed, the relay will retry: %s", type(exc).__name__)


@contextmanager
def request_connection() -> Iterator[Connection]:
    """One pooled connection for a request's writes and the steps after them (one checkout and
    ping, not one per step). Tests bind the app to a connection: that one, as it is."""
    bind = sessions().kw.get("bind")
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn
    elif isinstance(bind, Connection):
        yield bind
    else:
        raise TypeError(f"the app's sessions are bound to {bind!r}, not an engine or a connection")


@contextmanager
def single_statements(conn: Connection) -> Iterator[Connection]:
    """The request's connection in autocommit mode: each statement commits on its own, with no
    BEGIN or COMMIT round trips. For a block whose writes are one statement (`apply_callback`).
    On the test's connection, a savepoint inside the transaction it rolls back."""
    if conn.in_transaction():
        with conn.begin_nested():
            yield conn
        return
    conn.execution_options(isolation_level="AUTOCOMMIT")
    with conn.begin():  # SQLAlchemy's own bookkeeping: nothing is sent
        yield conn


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """One transaction on the request's connection, committed if the block returns (Core, no
    Session: for a request that writes a few prebuilt statements, the Session cost more than they
    do). On the test's connection, a savepoint inside the transaction it rolls back."""
    if conn.in_transaction():
        with conn.begin_nested():
            yield conn
        return
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        # Back from `single_statements`: the row locks taken here must hold until the COMMIT.
        conn.execution_options(isolation_level=conn.default_isolation_level)
    with conn.begin():
        yield conn


@contextmanager
def autocommit_sessions(conn: Connection | None = None) -> Iterator[SessionFactory]:
    """Sessions for work made of single statements (reads, the steps after a request's commit),
    all on one pooled connection: `conn` when given (`request_connection`'s, out of its
    transaction), else a new checkout.

    On PostgreSQL that connection is in autocommit mode: no BEGIN / COMMIT round trips around each
    statement. Reads lose nothing by it: under READ COMMITTED every statement takes its own
    snapshot inside a transaction too. Elsewhere (SQLite serialises writers with BEGIN IMMEDIATE;
    tests bind the app to their own connection) the app's sessions are used.
    """
    factory = sessions()
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
        yield factory
        return
    with nullcontext(conn) if conn is not None else bind.connect() as quick:
        quick.execution_options(isolation_level="AUTOCOMMIT")
        # The app's factory with this connection as bind (a new sessionmaker per call would also
        # build a new Session class, and its event bookkeeping, per request).
        yield partial(factory, bind=quick)


def limiter_for(app: Flask) -> SlotLimiter:
    found: SlotLimiter | None = app.extensions.get(LIMITER_KEY)
    if found is None:
        from worker.limiter import RedisSlotLimiter

        settings: Settings = app.extensions[_SETTINGS]
        found = app.extensions[LIMITER_KEY] = RedisSlotLimiter(
            settings.limiter_redis_url,
            limit=settings.accounts[0].concurrency,  # the first account's keys and slots
            lease_seconds=settings.slot_lease_seconds,
            key_prefix=settings.limiter_key_prefix,
            socket_timeout=LIMITER_SOCKET_TIMEOUT_SECONDS,
        )
    return found
