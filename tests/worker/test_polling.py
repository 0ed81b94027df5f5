"""Expected-duration polling: the pure decisions alone, then rounds against the simulator over HTTP
with real PostgreSQL and a Redis limiter, callbacks never sent (jobs created with no public URL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from models.base import utcnow
from models.db import session_scope
from models.tables import Job
from tests.worker.harness import Harness
from worker import polling, submit
from worker.outcome import Step
from worker.polling import Expected, InFlight, due, expected, poll_overdue

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
KEY = ("kling", "kling-v1")


def flight(job_id: str, age: float, polled_ago: float | None = None) -> InFlight:
    polled = None if polled_ago is None else NOW - timedelta(seconds=polled_ago)
    return InFlight(job_id, f"task-{job_id}", KEY, NOW - timedelta(seconds=age), polled)


# --- decisions ------------------------------------------------------------------------------------
def test_durations_are_learned_once_there_are_enough_samples() -> None:
    assert expected([1.0, 2.0]) is None
    assert expected([float(s) for s in range(1, 11)]) == Expected(6.0, 10.0)


LEARNED = {KEY: Expected(2.0, 4.0)}


def test_a_task_is_due_past_its_p90_or_its_p50_while_jobs_wait_for_slots() -> None:
    jobs = [flight("young", 1.0), flight("middle", 3.0), flight("old", 5.0)]
    assert [j.id for j in due(jobs, LEARNED, NOW, slots_wanted=False)] == ["old"]
    assert [j.id for j in due(jobs, LEARNED, NOW, slots_wanted=True)] == ["old", "middle"]


def test_a_task_is_asked_again_only_after_a_spacing_that_grows_with_its_age() -> None:
    # p50/2 = 1 s: asked 0.5 s ago, not yet; 1.5 s ago, yes.
    assert due([flight("a", 5.0, polled_ago=0.5)], LEARNED, NOW, slots_wanted=False) == []
    assert len(due([flight("a", 5.0, polled_ago=1.5)], LEARNED, NOW, slots_wanted=False)) == 1
    # Stuck for ten minutes at the provider: once a minute (a tenth of its age), not every second.
    assert due([flight("s", 600.0, polled_ago=30.0)], LEARNED, NOW, slots_wanted=True) == []
    assert len(due([flight("s", 600.0, polled_ago=61.0)], LEARNED, NOW, slots_wanted=True)) == 1


def test_a_kind_not_learned_yet_is_probed_ever_less_often() -> None:
    other = ("kling", "other")

    def probe(age: float, polled_ago: float | None = None) -> list[InFlight]:
        polled = None if polled_ago is None else NOW - timedelta(seconds=polled_ago)
        job = InFlight("x", "t", other, NOW - timedelta(seconds=age), polled)
        return due([job], LEARNED, NOW, slots_wanted=False)

    assert probe(0.5) == [] and len(probe(1.0)) == 1  # from 1 s on
    assert probe(8.0, polled_ago=1.5) == [] and len(probe(8.0, polled_ago=2.0)) == 1  # age/4
    assert probe(60.0, polled_ago=10.0) == [] and len(probe(60.0, polled_ago=15.0)) == 1


def test_the_longest_unheard_of_goes_first() -> None:
    jobs = [flight("polled", 50.0, polled_ago=10.0), flight("never", 6.0), flight("older", 9.0)]
    order = [j.id for j in due(jobs, LEARNED, NOW, slots_wanted=False)]
    assert order == ["polled", "older", "never"]


def test_learned_durations_are_read_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = polling.DurationCache()
    loads: list[int] = []

    def load() -> dict[polling.Key, Expected]:
        loads.append(1)
        return {KEY: Expected(float(len(loads)), 9.0)}

    assert cache.get(load) == cache.get(load) == {KEY: Expected(1.0, 9.0)}
    monkeypatch.setattr(polling, "DURATIONS_TTL_SECONDS", 0.0)
    assert cache.get(load) == {KEY: Expected(2.0, 9.0)}


def test_the_in_process_gate_keeps_the_same_rules() -> None:
    gate = polling.LocalPollGate()
    held = gate.try_round()
    assert held is not None and gate.try_round() is None  # one round at a time
    held.release()
    assert gate.rate_limited() == polling.PAUSE_FIRST_SECONDS
    assert gate.try_round() is None  # paused
    assert gate.rate_limited() == polling.PAUSE_FIRST_SECONDS * 2
    gate.answered()
    assert gate.rate_limited() == polling.PAUSE_FIRST_SECONDS


# --- rounds ---------------------------------------------------------------------------------------
def _tune(harness: Harness, **values: float) -> None:
    harness.svc.settings = harness.svc.settings.model_copy(update=values)


def _submitted(harness: Harness, count: int) -> list[str]:
    ids = [harness.job({"prompt": f"p{i}", "n": 1}) for i in range(count)]
    for job_id in ids:
        assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    for job_id in ids:
        harness.wait_sim_final(harness.get(job_id).provider_task_id or "")
    _backdate(harness, ids)
    return ids


def _backdate(harness: Harness, ids: list[str]) -> None:
    """Submitted ten seconds ago: past the first probe of a kind not learned yet."""
    with session_scope(harness.svc.sessions) as s:
        s.execute(update(Job).where(Job.id.in_(ids)).values(submitted_at=utcnow() - timedelta(seconds=10)))


@pytest.fixture
def quick(harness: Harness) -> Harness:
    """Tasks of 0.2 s; `_submitted` dates them back past a first probe."""
    harness.sim.configure(task_seconds=0.2)
    _tune(harness, poll_max_per_second=5, poll_interval_seconds=1)
    return harness


def test_a_lost_callback_frees_its_slots_for_the_waiting_job_at_the_first_poll(quick: Harness) -> None:
    quick.svc.limiter.limit = 1
    (done,) = _submitted(quick, 1)
    waiting = quick.job({"prompt": "next", "n": 1})
    assert submit.submit_job(quick.svc, waiting).step is Step.WAIT
    report = poll_overdue(quick.svc)
    assert (report.due, report.requests, report.changed) == (1, 1, [done])
    job = quick.get(done)
    assert job.status == "succeeded" and job.last_polled_at is not None
    # The provider's own clock says how long it ran (0.2 s here), the sample the next rounds learn from.
    assert job.provider_seconds is not None and 0 < job.provider_seconds < 5
    # Handed straight on: the lease is gone, the waiting job dispatched, the archive queued.
    assert done not in quick.svc.limiter.holders()
    assert ("dispatch_job", [waiting]) in quick.published
    assert ("archive_job", [done]) in quick.published
    # The release_slots row was done here: no worker task is queued for it.
    assert ("release_slots", [done]) not in quick.published


def test_several_due_tasks_are_answered_by_one_list_request(quick: Harness) -> None:
    ids = _submitted(quick, 4)
    report = poll_overdue(quick.svc)
    assert (report.requests, report.list_requests) == (1, 1)
    assert sorted(report.changed) == sorted(ids)


def test_lookups_stay_within_the_request_budget(quick: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(polling, "LIST_FROM", 100)  # lookups one by one
    _tune(quick, poll_max_per_second=2)
    ids = _submitted(quick, 5)
    first = poll_overdue(quick.svc)
    assert (first.due, first.requests, len(first.changed)) == (5, 2, 2)
    second = poll_overdue(quick.svc)
    assert (second.due, second.requests, len(second.changed)) == (3, 2, 2)
    assert set(first.changed) | set(second.changed) < set(ids)


def test_a_1302_pauses_polling_and_the_pause_doubles_while_it_lasts(quick: Harness) -> None:
    _submitted(quick, 1)
    quick.sim.configure(fault_1302_rate=1.0)
    report = poll_overdue(quick.svc)
    assert report.rate_limited and report.changed == []
    # Paused: the next round does not ask at all.
    assert poll_overdue(quick.svc).skipped
    assert quick.svc.poll_gate.rate_limited() == polling.PAUSE_FIRST_SECONDS * 2


def test_one_round_at_a_time(quick: Harness) -> None:
    _submitted(quick, 1)
    held = quick.svc.poll_gate.try_round()
    assert held is not None
    try:
        assert poll_overdue(quick.svc).skipped
    finally:
        held.release()
    assert poll_overdue(quick.svc).changed


def test_a_task_still_running_keeps_its_lease_and_is_asked_again_later(quick: Harness) -> None:
    quick.sim.configure(task_seconds=30)
    job_id = quick.job({"prompt": "long", "n": 1})
    assert submit.submit_job(quick.svc, job_id).step is Step.DONE
    _backdate(quick, [job_id])
    report = poll_overdue(quick.svc)
    assert report.requests == 1 and report.changed == []
    assert job_id in quick.svc.limiter.holders()
    # Just asked: the next round leaves it alone.
    assert poll_overdue(quick.svc).requests == 0


def test_a_failing_list_request_leaves_the_lookups_to_answer(
    quick: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kling.errors import ServerError

    ids = _submitted(quick, 4)

    def broken(*_: object, **__: object) -> None:
        raise ServerError("list endpoint down")

    monkeypatch.setattr(quick.svc.provider, "list_tasks", broken)
    report = poll_overdue(quick.svc)
    # The list cost a request of the budget of 5; the four lookups answered every job.
    assert (report.requests, report.list_requests) == (5, 0)
    assert sorted(report.changed) == sorted(ids)


def test_a_job_whose_lookup_fails_goes_to_the_back_of_the_line(
    quick: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kling.errors import ServerError

    monkeypatch.setattr(polling, "LIST_FROM", 100)
    (job_id,) = _submitted(quick, 1)

    def broken(*_: object, **__: object) -> None:
        raise ServerError("lookup failed")

    monkeypatch.setattr(quick.svc.provider, "get_task", broken)
    report = poll_overdue(quick.svc)
    assert report.requests == 1 and report.changed == []
    assert quick.get(job_id).last_polled_at is not None
