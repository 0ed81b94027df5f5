"""The outbox relay: publish rows written with a state change, only after that change committed.

Both the webhook (right after a callback commits) and the beat schedule (every few seconds) call
`relay`; rows stay in the table while the broker is down and go out when it is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.db import session_scope
from models.tables import Outbox

log = logging.getLogger(__name__)

Publish = Callable[[str, list[Any]], None]


def relay(sessions: sessionmaker[Session], publish: Publish, *, batch: int = 500) -> int:
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


def backlog(session: Session) -> int:
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(Outbox).where(Outbox.dispatched_at.is_(None))) or 0
