"""Publishing outbox rows, only after the change that wrote them committed.

One path: the writers return the rows they wrote, and `publish_rows` sends exactly those once
their transaction committed (`publish_after_commit` calls it for every session of a factory; the
callback receiver calls it after its one-statement write). `relay`, on the beat schedule, is the
safety net: it sends whatever that missed (broker down, a crash between commit and publish).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import BigInteger, Table, Update, bindparam, event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.db import SessionFactory, among_ids, session_scope
from models.outbox import QueuedTask, take_pending
from models.tables import Outbox

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

Publish = Callable[[str, list[Any]], None]


def relay(sessions: SessionFactory, publish: Publish, *, batch: int = 500) -> int:
    """Publish due, undispatched rows in id order; returns how many went out.

    A row is marked dispatched only after its publish returned, so a crash in between publishes
    it again later: every task is idempotent, a lost task is not acceptable.
    """
    sent = 0
    with session_scope(sessions) as s:
        rows = s.scalars(
            select(Outbox)
            .where(Outbox.dispatched_at.is_(None), Outbox.available_at <= utcnow())
            .order_by(Outbox.id)
            .limit(batch)
            # Two relays never publish the same row at once; each takes what the other left.
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            row.attempts += 1
            try:
                publish(row.task, list(row.args))
            except Exception as exc:  # noqa: BLE001  (broker down: keep the row, retry later)
                log.warning("outbox: publishing %s%s failed, will retry: %s", row.task, row.args, exc)
                break
            row.dispatched_at = utcnow()
            sent += 1
    return sent


def publish_rows(
    sessions: SessionFactory, publish: Publish, rows: Sequence[QueuedTask], *, done: Collection[str] = ()
) -> int:
    """Publish rows the caller just committed, then mark them dispatched in one UPDATE.

    What `relay` does for the whole table, for known rows: no scan, no row locks. Rows whose task
    is in `done` are marked without being sent: the caller did that work itself. A row that fails
    to go out, and every row after it, stays for the relay; a crash before the UPDATE publishes
    again (tasks are idempotent) rather than never.
    """
    marked: list[int] = []
    for row in rows:
        if row.task not in done:
            try:
                publish(row.task, list(row.args))
            except Exception as exc:  # noqa: BLE001  (broker down: the relay takes the rest)
                log.warning("outbox: publishing %s%s failed, will retry: %s", row.task, row.args, exc)
                marked += [r.id for r in rows if r.task in done and r.id not in marked]
                break
        marked.append(row.id)
    if marked:
        with session_scope(sessions) as s:
            conn = s.connection()
            conn.execute(_mark(conn.dialect.name == "postgresql"), {"ids": marked, "now": utcnow()})
    return len(marked)


def publish_after_commit(factory: sessionmaker[Session], publish: Callable[[list[Any]], None]) -> None:
    """After each commit of a session from `factory`, `publish` the outbox rows it wrote (the
    after-commit hook of warehouse's tasks). Never raises into the committer: what fails to go
    out stays in the outbox for `relay`."""

    def committed(session: Session) -> None:
        rows = take_pending(session)
        if rows:
            try:
                publish(rows)
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "outbox publish after commit failed, the relay will retry: %s", type(exc).__name__
                )

    event.listen(factory, "after_commit", committed)
    # Rows of a transaction that did not commit do not exist.
    event.listen(factory, "after_rollback", take_pending)


@functools.cache
def _mark(postgresql: bool) -> Update:
    """Built once per dialect (it runs after every final callback); executed on the connection,
    not through the ORM."""
    outbox = cast(Table, Outbox.__table__)
    return (
        update(outbox)
        .where(among_ids(outbox.c.id, BigInteger(), postgresql=postgresql), outbox.c.dispatched_at.is_(None))
        .values(dispatched_at=bindparam("now"), attempts=outbox.c.attempts + 1)
    )


def backlog(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Outbox).where(Outbox.dispatched_at.is_(None))) or 0


# Publishing from a request handler must not hang on a dead broker: one quick retry, then the row
# waits in the outbox for the beat relay.
QUICK_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
# The webhook's: one attempt. Against a broker that accepts and never answers, a retry adds a whole
# socket timeout (and reopening the channel another); redis-py already reconnects a connection the
# server closed (a restart) when it takes it from its pool, so the retry bought little.
REQUEST_RETRY: dict[str, float] = {"max_retries": 0}


def celery_publisher(app: Celery, *, retry_policy: dict[str, float] | None = None) -> Publish:
    """`publish(outbox_task_name, args)` sending the matching Celery task on `app`."""
    from worker.tasks import OUTBOX_PRIORITIES, TASK_NAMES

    def publish(name: str, args: list[Any]) -> None:
        # The reprs given: Celery would otherwise walk the arguments with its saferepr for each
        # message; ours are ids.
        app.send_task(
            TASK_NAMES[name],
            args=args,
            priority=OUTBOX_PRIORITIES[name],
            retry=True,
            retry_policy=retry_policy,
            argsrepr=repr(args),
            kwargsrepr="{}",
        )

    return publish
