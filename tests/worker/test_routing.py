"""Several accounts (worker/routing.py, worker/submit.py): jobs spread over the accounts serving
their provider within each account's own concurrency, the account recorded on the job, every later
call on it, and no create on a second account after a create that may have gone out on the first.

Real parts: PostgreSQL, one Redis limiter per account, two simulators over HTTP (one per account).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from kling import KlingClient
from kling.simulator import Simulator
from models.accounts import Account
from models.base import utcnow
from models.db import make_engine, session_scope
from models.settings import Settings
from models.statemachine import create_job
from models.tables import DisabledAccount, Job
from models.tenants import create_tenant
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.simulator.helpers import wait_until
from tests.worker.harness import Harness, Jobs
from worker import polling, probe, repair, slots, submit
from worker.accounts import AccountGate
from worker.limiter import RedisSlotLimiter
from worker.outcome import Step
from worker.poll_gate import PollGate
from worker.services import Services

pytestmark = pytest.mark.integration


@dataclass
class Pool(Jobs):
    """Like `Harness`, over two accounts: one simulator and one limiter per account."""

    svc: Services
    sims: dict[str, Simulator]
    limiters: dict[str, RedisSlotLimiter]
    published: list[tuple[str, list[Any]]]


@pytest.fixture
def pool(committed_pg_url: str, simulator_factory: Any, redis_client: Any) -> Iterator[Pool]:
    concurrency = {"a": 2, "b": 2}
    # Own seeds: task ids are unique across real accounts, and must be across the simulators too.
    sims = {
        name: simulator_factory(concurrency=n, task_seconds=30, seed=seed)
        for seed, (name, n) in enumerate(concurrency.items())
    }
    prefix = f"test:routing:{secrets.token_hex(4)}"
    accounts = tuple(
        Account(name=name, provider="kling", api_base=sims[name].base_url, concurrency=n, api_key=None)
        for name, n in concurrency.items()
    )
    limiters = {
        name: RedisSlotLimiter(redis_client, limit=n, lease_seconds=60, key_prefix=f"{prefix}:{name}")
        for name, n in concurrency.items()
    }
    clients = {
        name: KlingClient(
            access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, base_url=sim.base_url, max_retries=0
        )
        for name, sim in sims.items()
    }
    engine = make_engine(committed_pg_url)
    published: list[tuple[str, list[Any]]] = []
    svc = Services(
        Settings(database_url=committed_pg_url, reconcile_after_seconds=0),
        engine=engine,
        accounts=accounts,
        account_providers=clients,
        limiters=dict(limiters),
        account_gate=AccountGate(redis_client, f"{prefix}:account", probe_seconds=30),
        poll_gate=PollGate(redis_client, f"{prefix}:poll"),
        publish=lambda name, args: published.append((name, args)),
    )
    yield Pool(svc, sims, dict(limiters), published)
    engine.dispose()
    keys = list(redis_client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_client.delete(*keys)


def test_jobs_spread_over_both_accounts_and_neither_goes_over_its_concurrency(pool: Pool) -> None:
    jobs = [pool.job() for _ in range(5)]
    outcomes = [submit.submit_job(pool.svc, j).step for j in jobs]
    assert outcomes == [Step.DONE] * 4 + [Step.WAIT]
    accounts = [pool.get(j).account for j in jobs]
    assert accounts == ["a", "a", "b", "b", None]
    for name, sim in pool.sims.items():
        assert sim.create_count == 2
        assert sim.max_slots_in_use <= 2
        assert set(pool.limiters[name].holders()) == {
            j for j, a in zip(jobs, accounts, strict=True) if a == name
        }
    assert pool.get(jobs[4]).status == "queued"


def test_the_pump_counts_the_free_slots_of_every_account(pool: Pool) -> None:
    jobs = [pool.job() for _ in range(5)]
    assert submit.submit_job(pool.svc, jobs[0]).step is Step.DONE  # one slot of a's two in use
    dispatched = slots.pump(pool.svc)
    assert dispatched == jobs[1:4]  # a has 1 free, b has 2


def test_a_job_whose_create_may_exist_on_one_account_is_never_created_on_another(pool: Pool) -> None:
    # As an ambiguous create leaves it: counted, on account a, the task there after all.
    job_id = pool.job()
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(create_attempts=1, account="a"))
    from kling import ImageRequest

    made = pool.svc.provider_for_account("a").create_image(
        ImageRequest.from_params({"prompt": "a lighthouse"}), external_task_id=job_id
    )
    # a is full (two other jobs hold its slots); b has every slot free, and still is not used.
    assert pool.limiters["a"].acquire("other-1", 1) and pool.limiters["a"].acquire("other-2", 1)
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT
    assert pool.sims["b"].create_count == 0 and pool.limiters["b"].holders() == {}
    pool.limiters["a"].release("other-1")
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    job = pool.get(job_id)
    assert (job.account, job.provider_task_id) == ("a", made.task_id)
    assert pool.sims["a"].create_count == 1 and pool.sims["b"].create_count == 0


def test_a_job_pinned_to_an_account_that_ran_dry_moves_once_that_account_says_no_task_exists(
    pool: Pool,
) -> None:
    # An ambiguous create on a left no task (the lookup says so); then a's pack runs dry for good.
    job_id = pool.job()
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(create_attempts=1, account="a"))
    pool.sims["a"].configure(account_code=1102)
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT  # looked up on a, created there: 1102
    assert pool.get(job_id).create_attempts == 0  # no task anywhere: no longer tied to a
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    assert pool.get(job_id).account == "b"
    assert pool.sims["a"].count_by_code.get(1102) == 1  # one create refused, not one per dispatch


def test_a_create_counted_before_accounts_were_recorded_stays_on_the_first_account(pool: Pool) -> None:
    # A job upgraded from the single-account schema: a create counted, no account recorded.
    job_id = pool.job()
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(create_attempts=1, account=None))
    assert pool.limiters["a"].acquire("other-1", 1) and pool.limiters["a"].acquire("other-2", 1)
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT  # a full; b free, and not used
    assert pool.sims["b"].create_count == 0 and pool.limiters["b"].holders() == {}


def test_a_job_taken_by_one_account_leaves_every_other_wait_queue(pool: Pool) -> None:
    for name in ("a", "b"):
        assert pool.limiters[name].acquire(f"{name}-1", 1) and pool.limiters[name].acquire(f"{name}-2", 1)
    job_id = pool.job()
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT  # queued with both accounts
    assert job_id in pool.limiters["a"].waiting() and job_id in pool.limiters["b"].waiting()
    pool.limiters["a"].release("a-1")
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE  # a, at its first try this run
    assert pool.get(job_id).account == "a"
    assert job_id not in pool.limiters["b"].waiting()


def test_a_create_dropped_after_it_went_through_is_found_on_its_own_account(pool: Pool) -> None:
    pool.sims["a"].configure(accept_then_drop_rate=1.0)
    job_id = pool.job()
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    job = pool.get(job_id)
    assert job.account == "a"
    assert len(pool.sims["a"].tasks_by_external_id(job_id)) == 1
    assert pool.sims["b"].create_count == 0


def test_a_disabled_account_takes_no_new_jobs(pool: Pool) -> None:
    with session_scope(pool.svc.sessions) as s:
        s.add(DisabledAccount(name="a"))
    try:
        job_id = pool.job()
        assert submit.submit_job(pool.svc, job_id).step is Step.DONE
        assert pool.get(job_id).account == "b"
        assert pool.sims["a"].create_count == 0
    finally:
        with session_scope(pool.svc.sessions) as s:
            s.query(DisabledAccount).delete()


def test_a_paused_account_sends_its_jobs_to_the_other(pool: Pool) -> None:
    pool.sims["a"].configure(account_code=1102)
    first = pool.job()
    assert submit.submit_job(pool.svc, first).step is Step.WAIT  # refused by a: queued, not failed
    job = pool.get(first)
    assert (job.status, job.create_attempts) == ("queued", 0)
    assert pool.svc.account_gate.state("a").code == 1102
    assert submit.submit_job(pool.svc, first).step is Step.DONE
    assert pool.get(first).account == "b"
    assert pool.sims["a"].tasks() == []


def test_1103_routes_the_job_to_another_account_and_fails_it_only_when_none_can(pool: Pool) -> None:
    pool.sims["a"].configure(account_code=1103)
    job_id = pool.job({"prompt": "x", "model_name": "kling-v2"})
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT
    assert pool.get(job_id).status == "queued"
    assert ("dispatch_job", [job_id]) in pool.published
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    assert pool.get(job_id).account == "b"
    assert pool.svc.account_gate.denied("a", "kling-v2")

    pool.sims["b"].configure(account_code=1103)
    other = pool.job({"prompt": "y", "model_name": "kling-v1"})
    assert submit.submit_job(pool.svc, other).step is Step.WAIT  # a refused kling-v1
    assert submit.submit_job(pool.svc, other).step is Step.FAILED  # and b too
    job = pool.get(other)
    assert (job.status, job.error_code) == ("failed", "1103")


def test_lookups_go_to_the_account_of_the_job(pool: Pool) -> None:
    jobs = [pool.job() for _ in range(4)]
    for j in jobs:
        assert submit.submit_job(pool.svc, j).step is Step.DONE
    on_b = next(j for j in jobs if pool.get(j).account == "b")
    report = repair.reconcile(pool.svc)
    # Every job was looked up on its own account: on the other one its task does not exist, and
    # the lookup would have failed and counted as an error.
    assert (report.polled, report.errors) == (4, 0)
    assert polling.confirm(pool.svc, on_b) != "lookup_failed"
    # Still running: each lease renewed in its own account's limiter, none moved.
    assert set(pool.limiters["b"].holders()) == {j for j in jobs if pool.get(j).account == "b"}


def test_each_account_polls_within_its_own_budget_and_a_1302_pauses_only_it(pool: Pool) -> None:
    for sim in pool.sims.values():
        sim.configure(task_seconds=0.05)
    pool.svc.settings = pool.svc.settings.model_copy(
        update={"poll_max_per_second": 1, "poll_interval_seconds": 1}
    )
    jobs = [pool.job() for _ in range(4)]
    for j in jobs:
        assert submit.submit_job(pool.svc, j).step is Step.DONE
    account = {j: pool.get(j).account or "" for j in jobs}
    assert sorted(account.values()) == ["a", "a", "b", "b"]
    tasks = [(pool.sims[account[j]], pool.get(j).provider_task_id or "") for j in jobs]
    wait_until(lambda: all(sim.task(t)["status"] == "succeed" for sim, t in tasks), what="the tasks' end")
    with session_scope(pool.svc.sessions) as s:  # due: a kind not learned yet, ten seconds old
        s.execute(update(Job).where(Job.id.in_(jobs)).values(submitted_at=utcnow() - timedelta(seconds=10)))
    pool.sims["a"].configure(fault_1302_rate=1.0)
    report = polling.poll_overdue(pool.svc)
    # One request a round per account: a's answered 1302, b's answered one of b's jobs.
    assert (report.due, report.requests, report.rate_limited) == (4, 2, True)
    assert [account[j] for j in report.changed] == ["b"]
    # a is paused; b asks again within its own budget.
    again = polling.poll_overdue(pool.svc)
    assert again.requests == 1 and [account[j] for j in again.changed] == ["b"]


def test_a_finished_task_records_its_units_and_frees_its_own_accounts_slots(pool: Pool) -> None:
    import time

    for sim in pool.sims.values():
        sim.configure(task_seconds=0.05)
    job_id = pool.job()
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    job = pool.get(job_id)
    client = pool.svc.provider_for_account(job.account)
    deadline = time.monotonic() + 10
    while not (task := client.get_image(job.provider_task_id)).status.is_final:
        assert time.monotonic() < deadline, "the task did not finish"
        time.sleep(0.02)
    if getattr(task, "units", None) is None:
        # The SDK's `units` (final_unit_deduction) lands with the simulator's packs; until then
        # the answer carries it as the SDK will.
        object.__setattr__(task, "units", 3.0)
    polling.apply_answer(pool.svc, job_id, task, job.account)
    assert pool.get(job_id).units == task.units  # type: ignore[attr-defined]
    assert pool.limiters[job.account or ""].holders() == {}


# --- the probe (worker/probe.py) -----------------------------------------------------------------------
class PackReporting:
    """The account's real client (the simulator over HTTP), with the pack query the SDK is gaining
    (`account_costs`), answering what the test sets: a number, None, or an exception to raise."""

    def __init__(self, client: KlingClient) -> None:
        self._client = client
        self.remaining: Any = 0.0
        self.asked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def account_costs(self) -> Any:
        self.asked += 1
        if isinstance(self.remaining, Exception):
            raise self.remaining
        from types import SimpleNamespace

        return SimpleNamespace(remaining_online=self.remaining)


def test_a_dry_account_is_asked_about_its_packs_once_per_interval_and_resumes_with_units(
    pool: Pool, redis_client: Any
) -> None:
    import time

    from kling.client import UnsupportedOperation

    reporting = PackReporting(pool.svc.provider_for_account("a"))  # type: ignore[arg-type]
    pool.svc._account_providers["a"] = reporting  # type: ignore[assignment]
    prefix = pool.svc.account_gate._prefix  # type: ignore[union-attr]  (the fixture cleans it up)
    fast = AccountGate(redis_client, f"{prefix}:fast", probe_seconds=0.3)
    pool.svc.__dict__["account_gate"] = fast
    fast.pause("a", 1102, "dry")
    pool.sims["a"].configure(account_code=1102)
    queued = pool.job()
    # b is full, so the job waits for a.
    assert pool.limiters["b"].acquire("x", 2)

    for answer in (0.0, None, UnsupportedOperation("no pack query"), RuntimeError("down")):
        reporting.remaining = answer
        asked = reporting.asked
        deadline = time.monotonic() + 10
        while reporting.asked == asked:
            assert time.monotonic() < deadline, "the pack was never asked about"
            assert probe.probe_paused(pool.svc) == []
            time.sleep(0.02)
        assert probe.probe_paused(pool.svc) == []  # at most once per interval
        assert reporting.asked == asked + 1
        assert fast.state("a").paused  # inconclusive: stays paused, no create sent
    assert pool.sims["a"].tasks() == []

    pool.sims["a"].configure(account_code=None)
    reporting.remaining = 12.0
    deadline = time.monotonic() + 10
    while not (resumed := probe.probe_paused(pool.svc)):
        assert time.monotonic() < deadline, "the account never resumed"
        time.sleep(0.02)
    assert resumed == ["a"] and not fast.state("a").paused
    assert ("dispatch_job", [queued]) in pool.published  # the queue drains
    assert submit.submit_job(pool.svc, queued).step is Step.DONE
    assert pool.get(queued).account == "a"


def test_an_account_paused_for_another_reason_is_not_asked_about_its_packs(pool: Pool) -> None:
    reporting = PackReporting(pool.svc.provider_for_account("a"))  # type: ignore[arg-type]
    reporting.remaining = 50.0
    pool.svc._account_providers["a"] = reporting  # type: ignore[assignment]
    pool.svc.account_gate.pause("a", 1101, "arrears")
    assert probe.probe_paused(pool.svc) == []
    assert reporting.asked == 0 and pool.svc.account_gate.state("a").paused


def test_a_waiting_job_keeps_its_place_in_every_queue_until_one_account_takes_it(pool: Pool) -> None:
    for name in ("a", "b"):
        assert pool.limiters[name].acquire(f"full-{name}", 2)
    job_id = pool.job()
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT
    assert job_id in pool.limiters["a"].waiting() and job_id in pool.limiters["b"].waiting()
    pool.limiters["b"].release("full-b")
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    assert pool.get(job_id).account == "b"
    assert job_id not in pool.limiters["a"].waiting()  # gone from the queue it no longer needs


def test_the_pump_keeps_a_waiter_too_big_for_the_free_slots_queued(pool: Pool, redis_client: Any) -> None:
    """Not dispatched, it does not ask again: without the pump vouching for it, it would lapse after
    `waiter_ttl` and lose its place and its starvation clock (worker/limiter.py)."""
    assert pool.limiters["a"].acquire("x", 1)
    assert pool.limiters["b"].acquire("y", 2)
    big = pool.job({"prompt": "a lighthouse", "n": 2})
    assert submit.submit_job(pool.svc, big).step is Step.WAIT
    seen_key = {name: limiter.keys[4] for name, limiter in pool.limiters.items()}
    before = {name: redis_client.zscore(key, big) for name, key in seen_key.items()}
    # The pump runs a moment later (Redis' clock moves in milliseconds): it must push the
    # waiter's expiry on, in both queues it waits in, without dispatching it.
    wait_until(
        lambda: (
            slots.pump(pool.svc) == []
            and all(redis_client.zscore(key, big) > before[name] for name, key in seen_key.items())
        ),
        what="the pump to push the waiter's expiry on",
    )
    assert big in pool.limiters["a"].waiting() and big in pool.limiters["b"].waiting()


# --- daily unit budgets (worker/budget.py) ----------------------------------------------------------------
def test_a_used_up_daily_budget_pauses_the_account_and_sends_jobs_elsewhere(
    pool: Pool, redis_client: Any
) -> None:
    from dataclasses import replace

    from models.base import utcnow
    from worker.account_views import account_views
    from worker.budget import UnitBudget

    a, b = pool.svc.accounts
    pool.svc.accounts = (replace(a, daily_unit_budget=1.0), b)
    pool.svc._by_name = {acc.name: acc for acc in pool.svc.accounts}
    prefix = pool.svc.account_gate._prefix  # type: ignore[union-attr]  (the fixture cleans it up)
    budget = pool.svc.__dict__["budget"] = UnitBudget(redis_client, f"{prefix}:budget")

    first, second = pool.job(), pool.job()
    for job_id in (first, second):
        assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    # No task of a has cost anything yet: 1 unit per slot is reserved for the first; the second
    # would pass the budget of 1, so a pauses until 00:00 UTC and the job goes to b.
    assert [pool.get(j).account for j in (first, second)] == ["a", "b"]
    assert budget.spent("a", utcnow()) == 1.0
    assert budget.paused("a", utcnow())
    view = next(v for v in account_views(pool.svc) if v.name == "a")
    assert (view.state, view.reason) == ("paused", "paused: budget")

    # The first task ends having cost 0.25: its reservation is settled to that.
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == first).values(status="archived", units=0.25))
    slots.release_slots(pool.svc, first)
    assert budget.spent("a", utcnow()) == 0.25
    # Still paused for the day although units are left: the next job goes to b, none to a.
    third = pool.job()
    assert submit.submit_job(pool.svc, third).step is Step.DONE
    assert pool.get(third).account == "b"
    assert pool.sims["a"].create_count == 1
    # The operator raises a's budget in the accounts file: a takes jobs again today.
    pool.svc.accounts = (replace(a, daily_unit_budget=3.0), b)
    pool.svc._by_name = {acc.name: acc for acc in pool.svc.accounts}
    assert not budget.paused("a", utcnow(), 3.0) and budget.paused("a", utcnow(), 1.0)
    fourth = pool.job()
    assert submit.submit_job(pool.svc, fourth).step is Step.DONE
    assert pool.get(fourth).account == "a"


def test_a_refused_create_gives_its_units_back(pool: Pool, redis_client: Any) -> None:
    from dataclasses import replace

    from models.base import utcnow
    from worker.budget import UnitBudget

    a, b = pool.svc.accounts
    pool.svc.accounts = (replace(a, daily_unit_budget=5.0), b)
    pool.svc._by_name = {acc.name: acc for acc in pool.svc.accounts}
    prefix = pool.svc.account_gate._prefix  # type: ignore[union-attr]
    budget = pool.svc.__dict__["budget"] = UnitBudget(redis_client, f"{prefix}:budget")
    pool.sims["a"].configure(account_code=1102)
    job_id = pool.job()
    assert submit.submit_job(pool.svc, job_id).step is Step.WAIT
    assert budget.spent("a", utcnow()) == 0.0


def test_budget_days_are_utc_and_estimates_learn_from_the_account() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from worker.budget import DEFAULT_UNITS_PER_SLOT, estimate, seconds_to_midnight, utc_day

    late = datetime(2026, 12, 6, 23, 59, 30, tzinfo=UTC)
    assert seconds_to_midnight(late) == 30.0
    assert utc_day(late.astimezone(timezone(timedelta(hours=9)))) == "2026-12-06"
    assert estimate(3, None) == 3 * DEFAULT_UNITS_PER_SLOT
    assert estimate(2, 0.25) == 0.5


def test_an_account_refusing_a_create_pauses_with_an_alert(pool: Pool) -> None:
    # Signed to ALERT_WEBHOOK_URL by the alert task (tests/worker/test_alerts.py).
    pool.svc.settings = pool.svc.settings.model_copy(update={"alert_webhook_url": "https://alerts.example/"})
    pool.sims["a"].configure(account_code=1102)
    assert submit.submit_job(pool.svc, pool.job()).step is Step.WAIT
    sent = [args for name, args in pool.published if name == "alert"]
    assert len(sent) == 1 and sent[0][0]["data"]["account"] == "a" and sent[0][0]["data"]["code"] == 1102


# --- a pinned job whose account changed under it -----------------------------------------------------
def pin(pool: Pool, job_id: str, account: str) -> None:
    """As an ambiguous create leaves a job: one create counted, on `account`."""
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(create_attempts=1, account=account))


def test_a_job_pinned_to_an_account_removed_from_the_file_waits_and_goes_nowhere_else(
    pool: Pool, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = pool.job()
    pin(pool, job_id, "gone")
    with caplog.at_level("WARNING", logger="worker.submit"):
        outcome = submit.submit_job(pool.svc, job_id)
    assert outcome.step is Step.WAIT and outcome.detail == "account gone is not configured"
    assert "add it back to KLING_ACCOUNTS_FILE" in caplog.text
    job = pool.get(job_id)
    assert (job.status, job.account, job.create_attempts, job.claim_token) == ("queued", "gone", 1, None)
    assert [sim.create_count for sim in pool.sims.values()] == [0, 0]


@pytest.mark.parametrize("task_exists", [True, False])
def test_a_pinned_job_larger_than_its_accounts_lowered_concurrency_is_looked_up_not_failed(
    pool: Pool, task_exists: bool
) -> None:
    # Created (maybe) on a with n=2; a's concurrency is then lowered to 1.
    from kling import ImageRequest

    job_id = pool.job({"prompt": "a lighthouse", "n": 2})
    pin(pool, job_id, "a")
    if task_exists:
        made = pool.svc.provider_for_account("a").create_image(
            ImageRequest.from_params({"prompt": "a lighthouse", "n": 2}), external_task_id=job_id
        )
    pool.limiters["a"].limit = 1
    outcome = submit.submit_job(pool.svc, job_id)
    job = pool.get(job_id)
    if task_exists:
        assert outcome.step is Step.DONE
        assert (job.status, job.provider_task_id) == ("submitted", made.task_id)
    else:
        # Surely no task on a: free to go where it fits (b, after the dispatch published now).
        assert outcome.step is Step.WAIT and ("dispatch_job", [job_id]) in pool.published
        assert (job.status, job.create_attempts, job.claim_token) == ("queued", 0, None)
        assert submit.submit_job(pool.svc, job_id).step is Step.DONE
        assert pool.get(job_id).account == "b"
    assert pool.sims["a"].create_count == (1 if task_exists else 0)


def test_a_model_refused_by_every_enabled_account_waits_while_a_disabled_one_could_take_it(
    pool: Pool,
) -> None:
    pool.svc.account_gate.deny("b", "kling-v2")
    with session_scope(pool.svc.sessions) as s:
        s.add(DisabledAccount(name="a"))
    try:
        job_id = pool.job({"prompt": "x", "model_name": "kling-v2"})
        outcome = submit.submit_job(pool.svc, job_id)
        assert outcome.step is Step.WAIT and outcome.detail == "only disabled accounts can take it"
        assert pool.get(job_id).status == "queued"
    finally:
        with session_scope(pool.svc.sessions) as s:
            s.query(DisabledAccount).delete()


def test_a_task_whose_units_are_unknown_keeps_its_estimate_spent(redis_client: Any) -> None:
    from models.base import utcnow
    from worker.budget import UnitBudget

    prefix = f"test:budget:{secrets.token_hex(4)}"
    budget = UnitBudget(redis_client, prefix)
    now = utcnow()
    try:
        assert budget.reserve("a", "job-1", 2.0, 10.0, now) and budget.reserve("a", "job-2", 2.0, 10.0, now)
        assert budget.settle("a", "job-1", None, now)  # finished, the provider said nothing: 2 stay spent
        assert budget.give_back("a", "job-2", now)  # no task was made: its 2 return
        assert budget.spent("a", now) == 2.0
        assert not budget.settle("a", "job-1", 1.0, now)  # settled once only
    finally:
        redis_client.delete(*redis_client.scan_iter(match=f"{prefix}*"))


def test_a_tenant_not_owed_leaves_only_the_queues_an_owed_tenant_wants(pool: Pool) -> None:
    """Tenant x's jobs only ask account a; y holds every slot of a and b and has a waiter in both
    queues. x is owed a's slots, so y's waiter leaves a's queue and keeps its place in b's."""
    x, y = (f"{label}-{secrets.token_hex(3)}" for label in ("x", "y"))
    with session_scope(pool.svc.sessions) as s:
        for name in (x, y):
            create_tenant(s, name)
        made = {
            t: [create_job(s, {"prompt": "p", "n": 1}, provider="kling", tenant=t).job.id for _ in range(n)]
            for t, n in ((x, 1), (y, 5))
        }
    (x_job,), (*y_running, y_waiter) = made[x], made[y]
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id.in_(y_running)).values(status="processing"))
    for job_id, account in zip(y_running, "aabb", strict=True):
        assert pool.limiters[account].acquire(job_id, 1)
    for account in "ab":
        assert not pool.limiters[account].acquire(y_waiter, 1, ahead=60)
    tenancy = pool.svc.tenancy
    tenancy.refresh()
    tenancy.wanted(x, ["a"])
    tenancy.wanted(y, ["a", "b"])

    assert slots.release_slots(pool.svc, y_running[0]) == [x_job]
    assert y_waiter not in pool.limiters["a"].waiting()
    assert y_waiter in pool.limiters["b"].waiting()


def test_the_pump_dispatches_the_queue_head_largest_first_and_the_limiter_agrees(harness: Harness) -> None:
    harness.svc.limiter.limit = 4
    assert harness.svc.limiter.acquire("running", 4)
    small = [harness.job({"prompt": f"small {i}", "n": 1}) for i in range(2)]
    big = harness.job({"prompt": "big", "n": 3})
    for job_id in [*small, big]:
        assert submit.submit_job(harness.svc, job_id).step is Step.WAIT
    first_small = next(w for w in harness.svc.limiter.waiting() if w in small)
    harness.svc.limiter.release("running")
    # 4 free: the 3-slot job first, then the earlier small one; in queue order it would have been
    # the two small ones, and the big one left for later.
    assert slots.pump(harness.svc) == [big, first_small]
    assert submit.submit_job(harness.svc, big).step is Step.DONE
    assert submit.submit_job(harness.svc, first_small).step is Step.DONE
    assert harness.svc.limiter.waiting() == [j for j in small if j != first_small]


def test_the_pump_sends_a_starving_waiter_first_as_the_limiter_serves_it(harness: Harness) -> None:
    """Every waiter starving (strict queue order): the head, of 2, must be sent, not the 3 behind it
    that fills more of the 4 free slots but which the limiter refuses while the head reserves."""
    harness.svc.limiter.limit = 4
    harness.svc.limiter.starve_after = 0
    assert harness.svc.limiter.acquire("running", 4)
    head = harness.job({"prompt": "head", "n": 2})
    assert submit.submit_job(harness.svc, head).step is Step.WAIT
    bigger = harness.job({"prompt": "bigger", "n": 3})
    assert submit.submit_job(harness.svc, bigger).step is Step.WAIT
    harness.svc.limiter.release("running")
    assert slots.pump(harness.svc) == [head]
    assert submit.submit_job(harness.svc, head).step is Step.DONE
