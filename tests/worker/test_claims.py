"""Claims by the database's clock on both backends, and the heartbeat that keeps a claim alive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.enums import JobStatus
from models.tables import Job
from tests.factories import make_job
from worker.claims import ClaimHeartbeat, ClaimLost, db_now, renew_claim, take_claim, unclaimed


def claimed_until(s: Session, job_id: str) -> datetime:
    value = s.scalar(select(Job.claimed_until).where(Job.id == job_id))
    assert value is not None
    return value


def test_claims_are_taken_renewed_and_freed_by_the_database_clock(any_db_session: Session) -> None:
    s = any_db_session
    job_id = make_job(s, JobStatus.SUCCEEDED).id
    s.flush()

    first = take_claim(s, job_id, JobStatus.SUCCEEDED, None, 600)
    assert first is not None
    until = claimed_until(s, job_id)
    # Written by the database (no Python clock involved), read back as an aware UTC datetime.
    assert until.tzinfo is not None and until.utcoffset() == timedelta(0)
    assert s.scalar(select(db_now(599))) < until <= s.scalar(select(db_now(601)))
    # Live: a second run finds it owned, and the job is not free for a re-dispatch.
    assert take_claim(s, job_id, JobStatus.SUCCEEDED, None, 600) is None
    assert s.scalar(select(Job.id).where(Job.id == job_id, unclaimed())) is None
    assert renew_claim(s, job_id, first, 900)
    assert claimed_until(s, job_id) > until

    # Expired (a value written by Python's clock compares with the database's on both backends).
    s.execute(update(Job).where(Job.id == job_id).values(claimed_until=utcnow() - timedelta(seconds=60)))
    assert s.scalar(select(Job.id).where(Job.id == job_id, unclaimed())) == job_id
    second = take_claim(s, job_id, JobStatus.SUCCEEDED, None, 600)
    assert second is not None and second != first
    # The first run has lost it: its renewal says so, and extends nothing.
    before = claimed_until(s, job_id)
    assert not renew_claim(s, job_id, first, 6000)
    assert claimed_until(s, job_id) == before


def test_db_now_reads_back_as_utc_on_both_backends(any_db_session: Session) -> None:
    now = any_db_session.scalar(select(db_now()))
    later = any_db_session.scalar(select(db_now(3600.5)))
    assert isinstance(now, datetime) and now.tzinfo is not None
    assert later - now >= timedelta(seconds=3600.4)
    # Within a day of the host's clock: the same calendar, not a local-time offset.
    assert abs(now - datetime.now(UTC)) < timedelta(hours=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_renews_once_per_third_of_the_claim_and_stops_a_lost_claim() -> None:
    clock = FakeClock()
    renewals: list[float] = []
    answers = iter([True, True, False])

    def renew() -> bool:
        renewals.append(clock.now)
        return next(answers)

    beat = ClaimHeartbeat(renew, 30.0, clock=clock)
    for _ in range(1000):  # every chunk of a fast copy: no renewal before it is due
        beat()
    assert renewals == []
    clock.now = 110.0
    beat()
    beat()
    assert renewals == [110.0]
    clock.now = 119.0
    beat()
    assert renewals == [110.0]
    clock.now = 120.0
    beat()
    assert renewals == [110.0, 120.0]
    clock.now = 130.0
    with pytest.raises(ClaimLost):
        beat()


def test_heartbeat_rides_out_a_failing_renewal_while_the_claim_still_holds() -> None:
    clock = FakeClock()
    calls: list[float] = []

    def renew() -> bool:
        calls.append(clock.now)
        raise ConnectionError("database unreachable")

    beat = ClaimHeartbeat(renew, 30.0, clock=clock)
    clock.now = 110.0
    beat()  # failed, the claim still holds until 130: carry on
    clock.now = 129.0
    beat()
    assert calls == [110.0, 129.0]
    clock.now = 130.0
    with pytest.raises(ClaimLost, match="could not be renewed"):
        beat()
