"""Pruning, run by the sweep: published outbox rows older than `OUTBOX_KEEP_DAYS` and stored
callbacks older than `CALLBACK_EVENTS_KEEP_DAYS` are deleted, so neither table grows forever.

The work per run is bounded: each batch is one DELETE of at most `batch` rows, the oldest first,
found through the index on the age column (`ix_outbox_dispatched`,
`ix_callback_events_received_at`) and committed on its own, so no run holds locks for long; a run
stops after `max_batches` per table and the next run takes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Column, Delete, Select, Table, any_, delete, func, select

from models.db import SessionFactory, session_scope
from models.tables import CallbackEvent, Outbox

BATCH_ROWS = 5000
# 20 batches of 5,000: 100,000 rows per table per run, 2.4 million a day at the hourly default.
MAX_BATCHES = 20

_OUTBOX, _EVENTS = cast(Table, Outbox.__table__), cast(Table, CallbackEvent.__table__)


@dataclass(frozen=True)
class PruneReport:
    """Rows deleted (or, in a dry run, that would be deleted by this run) per table."""

    outbox: int = 0
    callback_events: int = 0


def oldest(table: Table, age: Column[Any], before: datetime, limit: int) -> Select[Any]:
    """Ids of the rows whose `age` is before `before`, oldest first: an index range scan that stops
    after `limit` rows. A NULL age (an outbox row not yet published) never qualifies."""
    return select(table.c.id).where(age.is_not(None), age < before).order_by(age).limit(limit)


def delete_batch(table: Table, age: Column[Any], before: datetime, batch: int, *, postgresql: bool) -> Delete:
    chosen = oldest(table, age, before, batch).scalar_subquery()
    if postgresql:
        # `id = ANY(ARRAY(SELECT ...))`: the ids are found first, then each row by its key. With
        # `id IN (SELECT ...)` the planner hash-joins against a scan of the whole table instead.
        return delete(table).where(table.c.id == any_(func.array(chosen)))
    return delete(table).where(table.c.id.in_(chosen))


def prune_table(
    sessions: SessionFactory,
    table: Table,
    age: Column[Any],
    before: datetime,
    *,
    batch: int = BATCH_ROWS,
    max_batches: int = MAX_BATCHES,
    dry_run: bool = False,
) -> int:
    """Delete rows of `table` older than `before`, in at most `max_batches` transactions of at most
    `batch` rows each; returns how many went (in a dry run: how many this run would delete)."""
    if dry_run:
        chosen = oldest(table, age, before, batch * max_batches).subquery()
        with session_scope(sessions) as s:
            return s.scalar(select(func.count()).select_from(chosen)) or 0
    deleted = 0
    for _ in range(max_batches):
        with session_scope(sessions) as s:
            conn = s.connection()
            statement = delete_batch(table, age, before, batch, postgresql=conn.dialect.name == "postgresql")
            count = conn.execute(statement).rowcount
        deleted += count
        if count < batch:
            break
    return deleted


def prune(
    sessions: SessionFactory,
    *,
    outbox_before: datetime,
    events_before: datetime,
    batch: int = BATCH_ROWS,
    max_batches: int = MAX_BATCHES,
    dry_run: bool = False,
) -> PruneReport:
    """Published outbox rows dispatched before `outbox_before`, callback events received before
    `events_before`. Undispatched outbox rows stay whatever their age: the relay still owes them."""

    def run(table: Table, age: Column[Any], before: datetime) -> int:
        return prune_table(
            sessions, table, age, before, batch=batch, max_batches=max_batches, dry_run=dry_run
        )

    return PruneReport(
        outbox=run(_OUTBOX, _OUTBOX.c.dispatched_at, outbox_before),
        callback_events=run(_EVENTS, _EVENTS.c.received_at, events_before),
    )
