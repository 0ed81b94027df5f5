"""Pruning old outbox rows and callback events (worker/pruning.py, run by the sweep), on real
PostgreSQL and SQLite, and 64-bit ids on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select, text

from models.base import utcnow
from models.db import make_engine, make_sessionmaker, session_scope, upgrade
from models.outbox import enqueue_rows
from models.settings import Settings
from models.tables import CallbackEvent, Outbox
from tests.fixtures.db import empty_tables
from worker import pruning, repair
from worker.outbox import publish_rows
from worker.services import Services

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database whose rows really commit (pruning commits batch by batch)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("committed_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'prune.db'}"
        upgrade(url)
    engine = make_engine(url)
    empty_tables(engine)
    yield engine
    engine.dispose()


def add_outbox(engine: Engine, count: int, *, dispatched: datetime | None, created: datetime) -> None:
    rows = [
        {"task": "archive_job", "args": [f"job-{i}"], "created_at": created, "dispatched_at": dispatched}
        for i in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Outbox), rows)


def add_events(engine: Engine, count: int, *, received: datetime, tag: str) -> None:
    rows = [
        {"dedupe_key": f"{tag}-{i}", "body": "{}", "outcome": "applied", "received_at": received}
        for i in range(count)
    ]
    with engine.begin() as conn:
        conn.execute(insert(CallbackEvent), rows)


def outbox_rows(engine: Engine) -> list[tuple[str, datetime | None]]:
    with engine.connect() as conn:
        return [(r.args[0], r.dispatched_at) for r in conn.execute(select(Outbox).order_by(Outbox.id))]


def event_keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(select(CallbackEvent.dedupe_key).order_by(CallbackEvent.id)))


def deletes_of(engine: Engine) -> list[int]:
    """Row counts of every DELETE run on `engine` from now on (a list that fills as they run)."""
    counts: list[int] = []

    def record(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            counts.append(cursor.rowcount)

    event.listen(engine, "after_cursor_execute", record)
    return counts


def test_old_rows_go_recent_and_undispatched_rows_stay(engine: Engine) -> None:
    now = utcnow()
    add_outbox(engine, 3, dispatched=now - timedelta(days=8), created=now - timedelta(days=8))
    add_outbox(engine, 2, dispatched=now - timedelta(days=6), created=now - timedelta(days=8))
    # Never published, however old: the relay still owes these.
    add_outbox(engine, 2, dispatched=None, created=now - timedelta(days=30))
    add_events(engine, 4, received=now - timedelta(days=91), tag="old")
    add_events(engine, 2, received=now - timedelta(days=89), tag="recent")
    sessions = make_sessionmaker(engine)
    cutoffs = {"outbox_before": now - timedelta(days=7), "events_before": now - timedelta(days=90)}

    dry = pruning.prune(sessions, **cutoffs, dry_run=True)
    assert dry == pruning.PruneReport(outbox=3, callback_events=4)
    assert len(outbox_rows(engine)) == 7 and len(event_keys(engine)) == 6

    assert pruning.prune(sessions, **cutoffs) == pruning.PruneReport(outbox=3, callback_events=4)
    left = outbox_rows(engine)
    assert len(left) == 4
    assert sum(dispatched is None for _, dispatched in left) == 2
    assert all(dispatched is None or dispatched > cutoffs["outbox_before"] for _, dispatched in left)
    assert event_keys(engine) == ["recent-0", "recent-1"]
    assert pruning.prune(sessions, **cutoffs) == pruning.PruneReport()


def test_batches_are_bounded_and_the_next_run_takes_the_rest(engine: Engine) -> None:
    now = utcnow()
    add_outbox(engine, 25, dispatched=now - timedelta(days=10), created=now - timedelta(days=10))
    sessions = make_sessionmaker(engine)
    before = now - timedelta(days=7)
    table, age = pruning._OUTBOX, pruning._OUTBOX.c.dispatched_at
    deletes = deletes_of(engine)

    assert pruning.prune_table(sessions, table, age, before, batch=10, max_batches=2, dry_run=True) == 20
    assert deletes == []
    assert pruning.prune_table(sessions, table, age, before, batch=10, max_batches=2) == 20
    assert deletes == [10, 10]  # two statements of at most `batch` rows, then the run stops
    assert len(outbox_rows(engine)) == 5
    deletes.clear()
    assert pruning.prune_table(sessions, table, age, before, batch=10, max_batches=2) == 5
    assert deletes == [5]  # a short batch means nothing is left: no second statement
    assert outbox_rows(engine) == []


def test_oldest_rows_go_first(engine: Engine) -> None:
    now = utcnow()
    add_events(engine, 2, received=now - timedelta(days=200), tag="oldest")
    add_events(engine, 2, received=now - timedelta(days=100), tag="older")
    table, age = pruning._EVENTS, pruning._EVENTS.c.received_at
    before = now - timedelta(days=90)
    pruning.prune_table(make_sessionmaker(engine), table, age, before, batch=2, max_batches=1)
    assert event_keys(engine) == ["older-0", "older-1"]


def test_sweep_prunes_by_the_keep_days_settings(engine: Engine) -> None:
    now = utcnow()
    add_outbox(engine, 2, dispatched=now - timedelta(days=4), created=now - timedelta(days=4))
    add_events(engine, 3, received=now - timedelta(days=12), tag="old")
    add_events(engine, 1, received=now - timedelta(days=8), tag="recent")
    settings = Settings(database_url=str(engine.url), outbox_keep_days=3, callback_events_keep_days=10)
    svc = Services(settings, engine=engine)
    report = repair.sweep(svc, dry_run=True)
    assert report.pruned == pruning.PruneReport(outbox=2, callback_events=3)
    assert len(outbox_rows(engine)) == 2
    report = repair.sweep(svc)
    assert report.pruned == pruning.PruneReport(outbox=2, callback_events=3)
    assert outbox_rows(engine) == [] and event_keys(engine) == ["recent-0"]


# --- 64-bit ids ---------------------------------------------------------------------------------------
ID_TABLES = ("outbox", "callback_events", "images", "transitions", "notifications")


def test_ids_are_bigint_on_postgresql(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        columns = dict(
            conn.execute(
                text(
                    "SELECT table_name, data_type FROM information_schema.columns "
                    "WHERE column_name = 'id' AND table_name = ANY(:t)"
                ),
                {"t": list(ID_TABLES)},
            ).all()
        )
        sequences = dict(
            conn.execute(
                text("SELECT sequencename, data_type FROM pg_sequences WHERE sequencename = ANY(:s)"),
                {"s": [f"{t}_id_seq" for t in ID_TABLES]},
            ).all()
        )
    assert columns == dict.fromkeys(ID_TABLES, "bigint")
    assert sequences == {f"{t}_id_seq": "bigint" for t in ID_TABLES}


def test_outbox_ids_past_int4_are_written_and_marked(committed_pg_url: str, db_engine: Engine) -> None:
    big = 3_000_000_000
    with db_engine.begin() as conn:
        conn.execute(text(f"ALTER SEQUENCE outbox_id_seq RESTART WITH {big}"))
    try:
        with session_scope(make_sessionmaker(db_engine)) as s:
            written = enqueue_rows(s, [("archive_job", ["job-a"]), ("notify", ["job-a"])])
        assert [row.id for row in written] == [big, big + 1]
        sent: list[tuple[str, list[Any]]] = []
        assert publish_rows(make_sessionmaker(db_engine), lambda n, a: sent.append((n, a)), written) == 2
        with db_engine.connect() as conn:
            undispatched = conn.scalar(
                select(func.count()).select_from(Outbox).where(Outbox.dispatched_at.is_(None))
            )
        assert undispatched == 0 and len(sent) == 2
    finally:
        empty_tables(db_engine)
        with db_engine.begin() as conn:
            conn.execute(text("ALTER SEQUENCE outbox_id_seq RESTART WITH 1"))
