"""Engines, sessions, a shared query piece and the programmatic `alembic upgrade head`."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Engine, any_, bindparam, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeEngine

# A sessionmaker, or anything else that makes a Session when called.
SessionFactory = Callable[[], Session]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
PG_CONNECT_TIMEOUT_SECONDS = 5
SQLITE_BUSY_TIMEOUT_MS = 10_000
# After five custom plans a prepared statement may switch to a generic plan, made from the
# statistics of that moment and kept until an ANALYZE: made on a small table, it scans it for good.
CUSTOM_PLANS = "SET plan_cache_mode = force_custom_plan"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver (or none) the URL names."""
    parsed = make_url(url)
    backend = parsed.drivername.split("+", 1)[0]
    if backend in ("postgresql", "postgres") and parsed.drivername != "postgresql+psycopg":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, answer_timeout: float | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`. On PostgreSQL every statement is planned for its own parameters and
    the tables' current size (docs/architecture.md, "Query plans"), and `answer_timeout` bounds
    every connect, query, commit and pool ping (the webhook's bound on a stalled database)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        connect_timeout = PG_CONNECT_TIMEOUT_SECONDS if answer_timeout is None else math.ceil(answer_timeout)
        connect_args = {"connect_timeout": connect_timeout, **kwargs.pop("connect_args", {})}
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _plan_each_run)
        if answer_timeout is not None:
            _bound_answers(engine, answer_timeout)
        return engine
    if backend == "sqlite":
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            # The default DATABASE_URL points into var/, which a fresh checkout does not have.
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, **kwargs)


def _plan_each_run(dbapi_connection: Any, _record: Any) -> None:
    # A SET, not a startup `options` parameter, which connection poolers may refuse.
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(CUSTOM_PLANS)
        dbapi_connection.commit()
    except Exception:
        dbapi_connection.close()  # the pool never saw it: nobody else would close it
        raise


def _bound_answers(engine: Engine, answer_timeout: float) -> None:
    from models.pgwait import connect_answer_bounded

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return connect_answer_bounded(answer_timeout, *cargs, **cparams)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so SAVEPOINT works and BEGIN is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if engine.url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred reader that later writes would get
        # SQLITE_BUSY at once (no busy-wait), which concurrent callbacks would hit.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def among_ids(
    column: ColumnElement[Any], item_type: TypeEngine[Any], *, postgresql: bool
) -> ColumnElement[bool]:
    """`column` is one of the list bound as `ids`. On PostgreSQL the list is one array parameter:
    an expanding IN is rendered again for each call (and each length), which costs more CPU than
    the query. For statements built once and run often."""
    if postgresql:
        return column == any_(bindparam("ids", type_=ARRAY(item_type)))
    return column.in_(bindparam("ids", expanding=True))


def walk_index_in_order(session: Session) -> None:
    """For the rest of this transaction, plan `ORDER BY ... LIMIT` reads as a walk of an index in
    that order, stopping at the limit, whatever the statistics say.

    Statistics lag a burst: 20,000 jobs queued in a minute look like none until autoanalyze runs,
    and on that estimate PostgreSQL fetched and sorted every queued row to return the first 100,
    on each slot release (O(backlog) per release). PostgreSQL only; elsewhere nothing changes.
    """
    if session.get_bind().dialect.name == "postgresql":
        # One round trip, not three: this runs on every slot release.
        session.execute(
            text(
                "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true),"
                " set_config('enable_seqscan', 'off', true)"
            )
        )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """`alembic upgrade head` against `url` (for `klingctl db upgrade` and test fixtures)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


@contextmanager
def scratch_database(admin_url: str, *, prefix: str, migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database (built by the migrations unless `migrate` is False) for the
    block's length, dropped afterwards even if connections are left open: tests and benchmarks."""
    admin_url = normalize_url(admin_url)
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        if migrate:
            upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
