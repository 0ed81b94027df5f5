"""Expected-duration polling: the pure decisions alone (worker/poll_plan.py), then rounds against
the simulator over HTTP with real PostgreSQL and a Redis limiter, callbacks never sent (jobs
created with no public URL), then the poller's loop in the beat process."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import redis
from celery.beat import Service
from celery.signals import beat_init
from sqlalchemy import update

from models.base import utcnow
from models.db import session_scope
from models.settings import Settings
from models.tables import Job
from tests.simulator.helpers import wait_until
from tests.worker.harness import Harness
from worker import poll_gate, poll_plan, polling, submit
from worker.accounts import DEFAULT_ACCOUNT
from worker.factory import make_celery
from worker.outcome import Step
from worker.poll_loop import PollLoop
from worker.poll_plan import Expected, InFlight, due, expected, wants_list
from worker.polling import poll_overdue
from worker.tasks import services_for

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


def test_the_next_round_comes_when_the_next_task_is_due_but_keeps_the_interval_after_asking() -> None:
    soon = poll_plan.PollReport(next_due_at=NOW + timedelta(seconds=0.05))
    assert poll_plan.next_round_in(soon, NOW, 0.2) == pytest.approx(0.05)
    # A round that asked the provider keeps the request budget's interval.
    asked = poll_plan.PollReport(requests=1, next_due_at=NOW + timedelta(seconds=0.05))
    assert poll_plan.next_round_in(asked, NOW, 0.2) == 0.2
    # Nothing due before the interval ends, nothing in flight, or due already but not asked
    # (a paused account): the interval, never a spin.
    for at in (NOW + timedelta(seconds=3), None, NOW - timedelta(seconds=1)):
        assert poll_plan.next_round_in(poll_plan.PollReport(next_due_at=at), NOW, 0.2) == 0.2
    tiny = poll_plan.PollReport(next_due_at=NOW + timedelta(milliseconds=1))
    assert poll_plan.next_round_in(tiny, NOW, 0.2) == poll_plan.MIN_ROUND_GAP_SECONDS


def test_the_next_due_task_leaves_out_tasks_heard_to_have_ended() -> None:
    from kling import TaskStatus

    young, old = flight("young", 1.0), flight("old", 5.0)
    ended = SimpleNamespace(status=TaskStatus.SUCCEEDED)
    running = SimpleNamespace(status=TaskStatus.PROCESSING)
    # young is due at its p50 (2 s), one second from now.
    assert poll_plan.next_due([young], {}, LEARNED, NOW, slots_wanted=True) == NOW + timedelta(seconds=1)
    # old, just heard of as still running, is due again a quarter p50 (0.5 s) from now.
    heard = {"old": running}
    assert poll_plan.next_due([young, old], heard, LEARNED, NOW, slots_wanted=True) == NOW + timedelta(
        seconds=0.5
    )
    assert poll_plan.next_due([old], {"old": ended}, LEARNED, NOW, slots_wanted=True) is None


def test_learned_durations_are_read_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = polling.DurationCache()
    loads: list[int] = []

    def load() -> dict[poll_plan.Key, Expected]:
        loads.append(1)
        return {KEY: Expected(float(len(loads)), 9.0)}

    assert cache.get(load) == cache.get(load) == {KEY: Expected(1.0, 9.0)}
    monkeypatch.setattr(polling, "DURATIONS_TTL_SECONDS", 0.0)
    assert cache.get(load) == {KEY: Expected(2.0, 9.0)}


def test_a_list_goes_first_when_it_answers_more_than_one_lookup_would() -> None:
    assert not wants_list(2, 2, slots_wanted=False)
    assert wants_list(poll_plan.LIST_FROM, poll_plan.LIST_FROM, slots_wanted=False)
    # While jobs wait for slots, one due task among several in flight is worth the list: a task
    # that ended early is on the same page.
    assert wants_list(1, 2, slots_wanted=True)
    assert not wants_list(1, 1, slots_wanted=True)
    assert not wants_list(0, 5, slots_wanted=True)


@pytest.mark.parametrize("make_gate", ["local", "redis"])
def test_both_gates_keep_the_same_rules(make_gate: str, redis_client: redis.Redis) -> None:
    prefix = f"test:poll:{secrets.token_hex(4)}"
    gate = poll_gate.LocalPollGate() if make_gate == "local" else poll_gate.PollGate(redis_client, prefix)
    held = gate.try_round()
    assert held is not None and gate.try_round() is None  # one round at a time
    held.release()
    # A 1302 pauses the account that answered it, and only that one; the pause doubles while they
    # repeat and starts over once the account answers.
    assert gate.rate_limited("a") == poll_gate.PAUSE_FIRST_SECONDS
    assert gate.paused(["a", "b"]) == {"a"}
    assert gate.rate_limited("a") == poll_gate.PAUSE_FIRST_SECONDS * 2
    gate.answered(["a"])
    assert gate.rate_limited("a") == poll_gate.PAUSE_FIRST_SECONDS
    # The jobs a list did not show are remembered until a lookup answered them.
    gate.note_missed(["j1", "j2"], [])
    gate.note_missed([], ["j1"])
    assert gate.missed() == {"j2"}


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


def test_a_list_also_answers_a_task_that_ended_before_it_was_due(quick: Harness) -> None:
    early, late = _submitted(quick, 2)
    quick.job({"prompt": "waiting", "n": 1})  # queued: slots are wanted
    with session_scope(quick.svc.sessions) as s:  # younger than a first probe: not due
        s.execute(update(Job).where(Job.id == early).values(submitted_at=utcnow()))
    report = poll_overdue(quick.svc)
    assert (report.due, report.requests, report.list_requests) == (1, 1, 1)
    assert sorted(report.changed) == sorted([early, late])


def test_a_due_task_its_list_did_not_show_is_looked_up_the_next_round(
    quick: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tune(quick, poll_max_per_second=1)  # one request a round
    ids = _submitted(quick, 3)
    hidden = quick.get(ids[0]).provider_task_id
    real = quick.svc.provider.list_tasks

    def fallen_off(*args: object, **kwargs: object) -> list[object]:
        return [task for task in real(*args, **kwargs) if task.task_id != hidden]

    monkeypatch.setattr(quick.svc.provider, "list_tasks", fallen_off)
    first = poll_overdue(quick.svc)
    assert (first.requests, first.list_requests) == (1, 1)
    assert sorted(first.changed) == sorted(ids[1:])
    second = poll_overdue(quick.svc)
    assert (second.requests, second.list_requests, second.changed) == (1, 0, [ids[0]])
    assert quick.svc.poll_gate.missed() == set()


def test_lookups_stay_within_the_request_budget(quick: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poll_plan, "LIST_FROM", 100)  # lookups one by one
    _tune(quick, poll_max_per_second=2)
    ids = _submitted(quick, 5)
    first = poll_overdue(quick.svc)
    assert (first.due, first.requests, len(first.changed)) == (5, 2, 2)
    second = poll_overdue(quick.svc)
    assert (second.due, second.requests, len(second.changed)) == (3, 2, 2)
    assert set(first.changed) | set(second.changed) < set(ids)


def test_a_1302_pauses_the_account_s_polling_and_the_pause_doubles_while_it_lasts(quick: Harness) -> None:
    _submitted(quick, 1)
    quick.sim.configure(fault_1302_rate=1.0)
    report = poll_overdue(quick.svc)
    assert report.rate_limited and report.changed == [] and report.requests == 1
    # Paused: the next round does not ask at all.
    again = poll_overdue(quick.svc)
    assert (again.due, again.requests) == (1, 0)
    assert quick.svc.poll_gate.rate_limited(DEFAULT_ACCOUNT) == poll_gate.PAUSE_FIRST_SECONDS * 2


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

    monkeypatch.setattr(poll_plan, "LIST_FROM", 100)
    (job_id,) = _submitted(quick, 1)

    def broken(*_: object, **__: object) -> None:
        raise ServerError("lookup failed")

    monkeypatch.setattr(quick.svc.provider, "get_task", broken)
    report = poll_overdue(quick.svc)
    assert report.requests == 1 and report.changed == []
    assert quick.get(job_id).last_polled_at is not None


# --- the loop in the beat process -----------------------------------------------------------------
def test_the_loop_survives_failing_rounds_logs_an_outage_once_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def run_round() -> None:
        calls.append(1)
        if len(calls) in {2, 3}:
            raise ConnectionError("database down for two rounds")

    loop = PollLoop(run_round, 0.01)
    with caplog.at_level("INFO", logger="worker.poll_loop"):
        loop.start()
        wait_until(lambda: len(calls) >= 5, what="rounds after the failing ones")
        loop.stop()
    stopped_at = len(calls)
    assert not loop._thread.is_alive() and len(calls) == stopped_at
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["poll round failed; retrying every round", "poll rounds work again after 2 failed"]


def test_beat_starts_the_poller_of_its_own_app_only(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[object] = []

    def counted(svc: object) -> poll_plan.PollReport:
        rounds.append(svc)
        return poll_plan.PollReport()

    monkeypatch.setattr(polling, "poll_overdue", counted)
    app = make_celery(Settings(celery_broker_url="memory://", poll_interval_seconds=0.01))
    other = make_celery(Settings(celery_broker_url="memory://"))
    beat_init.send(sender=Service(app))  # what `Service.start` sends, in beat's process
    try:
        assert not hasattr(other, "kling_poller")
        wait_until(lambda: len(rounds) >= 2, what="the poller's rounds")
        assert rounds[0] is services_for(app)
    finally:
        app.kling_poller.stop()
