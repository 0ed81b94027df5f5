"""PostgreSQL connections whose every wait for the server ends: for processes that must answer
quickly (the webhook). Why a client-side bound is the only one that works against a stalled
server: docs/performance.md#stalled-dependencies."""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg import errors
from psycopg.abc import PQGen

RV = TypeVar("RV")

# psycopg's own interval between checks for Ctrl-C inside a wait.
_WAIT_INTERVAL = 0.1


class AnswerBoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection on which no query, fetch, commit or rollback waits for the server
    longer than `answer_timeout` seconds (connecting is bounded by libpq's `connect_timeout`).

    Every exchange with the server goes through `wait`; psycopg 3.3's wait functions take a
    deadline. Past it the protocol is mid-message, so the connection is closed (SQLAlchemy then
    sees a disconnect and drops the pool) and the caller gets an `OperationalError`.
    """

    answer_timeout: float | None = None

    def wait(self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: float | None = None) -> RV:
        if timeout is not None or self.answer_timeout is None:
            # A caller with its own deadline (notifies, cancel) handles its own timeout.
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, self.answer_timeout)
        except errors._WaitTimeout:  # psycopg's own (private) name for an expired deadline
            self.close()
            raise psycopg.OperationalError(
                f"the database server did not answer within {self.answer_timeout:g} s"
            ) from None


def connect_answer_bounded(answer_timeout: float, *args: Any, **kwargs: Any) -> AnswerBoundedConnection:
    """`psycopg.connect(*args, **kwargs)` returning an `AnswerBoundedConnection`."""
    conn = AnswerBoundedConnection.connect(*args, **kwargs)
    conn.answer_timeout = answer_timeout
    return conn
