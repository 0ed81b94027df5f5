"""Claims: which run owns a job's current step, so only one talks to the provider or S3 at a time.

A claim is decided between processes, so its times come from one clock, the database's
(`db_now`): a worker host whose clock runs ahead must not see a live claim as expired.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, literal, or_, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from models.base import UTCDateTime
from models.db import session_scope
from models.enums import JobStatus
from models.tables import Job
from worker.outcome import Outcome, Step
from worker.services import Services

log = logging.getLogger(__name__)


class db_now(FunctionElement[datetime]):  # an SQL function, named like one
    """The database's clock plus `seconds` (negative: minus): `CURRENT_TIMESTAMP + interval`.

    SQLite keeps datetimes as text, so there it renders the text `UTCDateTime` stores
    (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC), which compares and reads back like the rest.
    """

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(literal(float(seconds)))


@compiles(db_now)
def _db_now_default(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(CURRENT_TIMESTAMP + {compiler.process(element.clauses, **kw)} * INTERVAL '1 second')"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', {seconds} || ' seconds') || '000')"


def take_claim(s: Session, job_id: str, status: JobStatus, token: str | None, hold: float) -> str | None:
    """Take the job's current step for this run for `hold` seconds, or None if a live run owns it.

    Redelivered messages, re-dispatches by the reconciler and the pump all end here: only one run
    at a time talks to the provider or S3 for a job. A retry presents the claim it was given. A run
    that dies leaves its claim to expire (`STUCK_SUBMIT_SECONDS` / `STUCK_ARCHIVE_SECONDS`, longer
    than the slowest provider or S3 call), then the reconciler dispatches the step again.
    """
    new_token = token or str(uuid.uuid4())
    free = unclaimed()
    if token is not None:
        free = or_(free, Job.claim_token == token)
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status, free)
        .values(claim_token=new_token, claimed_until=db_now(hold))
        .execution_options(synchronize_session=False)
    )
    return new_token if result.rowcount == 1 else None  # type: ignore[attr-defined]


def renew_claim(s: Session, job_id: str, token: str, hold: float) -> bool:
    """Extend this run's claim to `hold` seconds from now; False when another run took the job."""
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.claim_token == token)
        .values(claimed_until=db_now(hold))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def keep_claim(svc: Services, job_id: str, token: str, retry_in: float, hold: float) -> Outcome:
    """Hold the claim through the retry's countdown, so nothing else starts the step meanwhile."""
    with session_scope(svc.sessions) as s:
        renew_claim(s, job_id, token, retry_in + hold)
    return Outcome(Step.RETRY, retry_in=retry_in, claim=token)


def unclaimed(now: datetime | None = None) -> ColumnElement[bool]:
    """Jobs no live run owns, by the database's clock unless `now` is given."""
    moment: Any = db_now() if now is None else now
    return or_(Job.claimed_until.is_(None), Job.claimed_until < moment)


class ClaimLost(Exception):
    """Another run owns the job now (this run's claim expired and was taken): stop, write nothing."""


class ClaimHeartbeat:
    """Keeps a claim of `hold` seconds alive from inside a long copy: call it as often as you like
    (per chunk read, per part sent); it renews every `hold / 3` seconds and costs one monotonic
    clock read otherwise.

    `renew` returns False when another run took the claim: the heartbeat raises `ClaimLost`, so the
    copy stops before it writes anything more. A renewal that fails (database unreachable) is tried
    again at the next call; only once the last renewal's hold has run out is the claim given up.
    """

    def __init__(
        self, renew: Callable[[], bool], hold: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._renew = renew
        self._every = hold / 3
        self._hold = hold
        self._clock = clock
        now = clock()
        self._due = now + self._every
        self._held_until = now + hold

    def __call__(self) -> None:
        now = self._clock()
        if now < self._due:
            return
        try:
            renewed = self._renew()
        except Exception as exc:  # a blip must not end a copy the claim still covers
            if now >= self._held_until:
                raise ClaimLost(f"the claim could not be renewed: {type(exc).__name__}") from exc
            log.warning("archive: renewing the claim failed (%s), trying again", type(exc).__name__)
            self._due = now + min(1.0, self._every)
            return
        if not renewed:
            raise ClaimLost("another run took this job's claim")
        # Counted from before the renewal: the database's deadline is at least this late.
        self._held_until = now + self._hold
        self._due = now + self._every


def claim_heartbeat(svc: Services, job_id: str, token: str, hold: float) -> ClaimHeartbeat:
    """A heartbeat renewing the job's claim for `hold` seconds, every `hold / 3` seconds."""

    def renew() -> bool:
        with session_scope(svc.sessions) as s:
            return renew_claim(s, job_id, token, hold)

    return ClaimHeartbeat(renew, hold)
