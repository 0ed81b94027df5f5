"""Tenants share the slots by weight, within their max_slots and daily units (worker/tenancy.py,
worker/tenant_share.py). The decisions are tested as pure functions; the submit gate and the pump
on real parts (PostgreSQL, the Redis limiter, the simulator over HTTP) through `harness`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.db import session_scope
from models.outbox import DISPATCH_JOB
from models.statemachine import create_job
from models.tables import Job, Tenant
from models.tenants import Limits, create_tenant
from tests.worker.harness import Harness
from worker import slots, submit
from worker.outcome import Step
from worker.tenant_share import Picture, accounts_owed, fair_order, owed, shares, too_big, wait_reason


# --- the decisions ------------------------------------------------------------------------------
def test_shares_split_by_weight_and_water_fill_under_caps() -> None:
    limits = {"a": Limits(weight=1), "b": Limits(weight=3), "c": Limits(weight=4, max_slots=1)}
    assert shares(8, limits, frozenset({"a", "b"})) == {"a": 2.0, "b": 6.0}
    # c's split would be 4 but it may hold 1: the 7 left go to a and b by weight.
    assert shares(8, limits, frozenset({"a", "b", "c"})) == {"c": 1.0, "a": 1.75, "b": 5.25}


def picture(used: dict[str, int], waiting: set[str], **limits: Limits) -> Picture:
    return Picture(limits, used, frozenset(waiting), capacity=10)


def test_a_tenant_over_its_share_waits_while_another_is_owed() -> None:
    p = picture({"a": 9, "b": 1}, {"a", "b"})
    reason = wait_reason(p, "a", 1)
    assert reason is not None and "fair share is 5" in reason and "owed: b" in reason
    assert wait_reason(p, "b", 1) is None  # b is owed
    # Nobody else owed: a may use free slots (no slot idles for fairness' sake).
    assert wait_reason(picture({"a": 9}, {"a"}), "a", 1) is None
    assert wait_reason(picture({"a": 5, "b": 5}, {"a", "b"}), "a", 1) is None
    # Holding nothing, a tenant may always start a job, even one bigger than its share.
    assert wait_reason(picture({"a": 0, "b": 1}, {"a", "b", "c", "d"}), "a", 4) is None


def test_only_tenants_wanting_these_accounts_hold_a_job_back() -> None:
    # b is owed, but its jobs only ever asked the video account: a's images may use the rest.
    p = Picture(
        {},
        {"a": 5, "b": 2},
        frozenset({"a", "b"}),
        10,
        wanting={"a": frozenset({"img"}), "b": frozenset({"vid"})},
    )
    assert wait_reason(p, "a", 1, ["img"]) is None
    assert wait_reason(p, "a", 1, ["vid"]) is not None


def test_a_tenant_is_owed_no_more_than_its_accounts_have() -> None:
    # b's jobs only ever asked the 2-slot video account: its share is 2, not half of 10, so at 2
    # it is owed nothing and holds back nobody (it would otherwise be owed for ever).
    p = Picture(
        {},
        {"a": 6, "b": 2},
        frozenset({"a", "b"}),
        10,
        wanting={"a": frozenset({"img"}), "b": frozenset({"vid"})},
        account_slots={"img": 8, "vid": 2},
    )
    assert shares(10, {}, frozenset({"a", "b"}), p.reach({"a", "b"})) == {"b": 2.0, "a": 8.0}
    assert owed(p) == {"a"}
    assert accounts_owed(p, owed(p)) == {"img"}
    assert wait_reason(p, "b", 1, ["vid"]) is None


def test_a_job_bigger_than_its_tenants_cap_is_offered_and_does_not_block_the_rest() -> None:
    p = picture({"a": 0}, {"a"}, a=Limits(max_slots=2))
    assert fair_order({"a": [("big", 3), ("small", 1)]}, p) == ["big", "small"]
    assert too_big(Limits(max_slots=2), "a", 3) is not None and too_big(Limits(max_slots=2), "a", 2) is None


def test_max_slots_holds_a_tenant_back_even_with_free_slots() -> None:
    p = picture({"a": 2}, {"a"}, a=Limits(max_slots=3))
    assert wait_reason(p, "a", 1) is None
    reason = wait_reason(p, "a", 2)
    assert reason is not None and "max_slots" in reason


def test_fair_order_interleaves_by_weight_from_the_least_served() -> None:
    heads = {"a": [(f"a{i}", 1) for i in range(6)], "b": [(f"b{i}", 1) for i in range(6)]}
    p = picture({"a": 2, "b": 0}, {"a", "b"}, b=Limits(weight=2))
    order = fair_order(heads, p)
    # b holds nothing: it goes first; then b gets two turns for each of a's.
    assert order[:6] == ["b0", "b1", "b2", "b3", "a0", "b4"]


def test_fair_order_stops_a_tenant_at_its_max_slots() -> None:
    heads = {"a": [("a0", 2), ("a1", 2)], "b": [("b0", 1)]}
    p = picture({"a": 1}, {"a", "b"}, a=Limits(max_slots=3))
    assert fair_order(heads, p) == ["b0", "a0"]


@given(
    st.dictionaries(
        st.sampled_from("abcd"),
        st.tuples(
            st.lists(st.integers(1, 4), max_size=8),
            st.integers(0, 10),
            st.integers(1, 5),
            st.none() | st.integers(1, 12),
        ),
        max_size=4,
    )
)
def test_fair_order_keeps_each_tenants_order_and_caps(
    spec: dict[str, tuple[list[int], int, int, int | None]],
) -> None:
    heads = {t: [(f"{t}{i}", n) for i, n in enumerate(sizes)] for t, (sizes, _, _, _) in spec.items()}
    limits = {t: Limits(weight=w, max_slots=m) for t, (_, _, w, m) in spec.items()}
    used = {t: u for t, (_, u, _, _) in spec.items()}
    order = fair_order(heads, Picture(limits, used, frozenset(spec), capacity=10))
    assert len(order) == len(set(order))
    sizes = {job: n for jobs in heads.values() for job, n in jobs}
    for tenant, jobs in heads.items():
        mine = [j for j in order if j.startswith(tenant)]
        assert mine == [j for j, _ in jobs[: len(mine)]]  # a prefix of its own queue, in order
        cap = limits[tenant].max_slots
        if cap is not None:
            # A job bigger than the cap is offered (submit fails it) and holds nothing.
            fitting = sum(sizes[j] for j in mine if sizes[j] <= cap)
            assert used[tenant] + fitting <= max(cap, used[tenant])


# --- on real parts ------------------------------------------------------------------------------
@pytest.fixture
def tenants(harness: Harness) -> Iterator[dict[str, str]]:
    """Tenant names made for this test (random: the unit budgets live in a shared Redis)."""
    names: dict[str, str] = {}

    def make(label: str, **limits: object) -> str:
        name = f"{label}-{secrets.token_hex(3)}"
        with session_scope(harness.svc.sessions) as s:
            create_tenant(s, name, **limits)  # type: ignore[arg-type]
        names[label] = name
        harness.svc.tenancy.refresh()
        return name

    names_maker = make
    yield names_maker  # type: ignore[misc]
    budget = harness.svc.tenancy.budget
    redis_client = getattr(budget, "_redis", None)
    if redis_client is not None:
        for name in names.values():
            keys = list(redis_client.scan_iter(match=f"*tenant-budget:{name}:*"))
            if keys:
                redis_client.delete(*keys)


def queue(harness: Harness, tenant: str, count: int, n: int = 1) -> list[str]:
    with session_scope(harness.svc.sessions) as s:
        return [
            create_job(s, {"prompt": "p", "n": n}, provider="kling", tenant=tenant).job.id
            for _ in range(count)
        ]


def hold(harness: Harness, job_ids: list[str]) -> None:
    """The jobs run: they hold their slots as provider tasks would (no provider call made)."""
    with session_scope(harness.svc.sessions) as s:
        s.query(Job).filter(Job.id.in_(job_ids)).update({"status": "processing"})
    for job_id in job_ids:
        assert harness.svc.limiter.acquire(job_id, 1)


def dispatched(harness: Harness) -> list[str]:
    out = [args[0] for name, args in harness.published if name == DISPATCH_JOB]
    harness.published.clear()
    return out


def test_freed_slots_go_to_the_tenant_owed_them(harness: Harness, tenants) -> None:
    a, b = tenants("a"), tenants("b")
    running = queue(harness, a, 10)
    hold(harness, running)
    a_waiting = queue(harness, a, 5)  # a's jobs are older: without tenants they would go first
    b_waiting = queue(harness, b, 5)
    harness.svc.tenancy.refresh()
    # Queued jobs alone do not make b owed: b's jobs may be unable to start (a paused account).
    assert wait_reason(harness.svc.tenancy.picture(), a, 1) is None
    # b's job asks for slots and is refused: now b waits for slots, and is owed them.
    assert submit.submit_job(harness.svc, b_waiting[0]).step is Step.WAIT
    harness.svc.tenancy.refresh()

    # a holds every slot: its next job waits (b is owed), and leaves the wait queue.
    outcome = submit.submit_job(harness.svc, a_waiting[0])
    assert outcome.step is Step.WAIT and "owed: " + b in (outcome.detail or "")
    assert a_waiting[0] not in harness.svc.limiter.waiting()

    for i in range(5):
        harness.svc.tenancy.refresh()
        assert slots.release_slots(harness.svc, running[i]) == [b_waiting[i]]
        dispatched(harness)
        assert submit.submit_job(harness.svc, b_waiting[i]).step is Step.DONE
    # 5 and 5: the shares are met; a's next job is no longer held back.
    harness.svc.tenancy.refresh()
    assert slots.release_slots(harness.svc, running[5]) == [a_waiting[0]]


def test_weights_split_the_freed_slots(harness: Harness, tenants) -> None:
    a, b = tenants("a"), tenants("b", weight=3)
    running = queue(harness, a, 10)
    hold(harness, running)
    queue(harness, a, 10)
    b_jobs = set(queue(harness, b, 10))
    for job_id in running[:8]:
        harness.svc.limiter.release(job_id)
    harness.svc.tenancy.refresh()
    order = slots.pump(harness.svc)
    # 8 free slots, a holds 2: b's share is 7.5 of 10, so the 8 go 7 to b and 1 to a.
    assert len(order) == 8 and sum(j in b_jobs for j in order) == 7


def test_max_slots_is_enforced_and_the_pump_respects_it(harness: Harness, tenants) -> None:
    c = tenants("c", max_slots=2)
    jobs = queue(harness, c, 4)
    outcomes = [submit.submit_job(harness.svc, j) for j in jobs]
    assert [o.step for o in outcomes] == [Step.DONE, Step.DONE, Step.WAIT, Step.WAIT]
    assert "max_slots" in (outcomes[2].detail or "")
    dispatched(harness)
    # Free slots, but c is at its cap: the pump offers none of its jobs.
    assert slots.pump(harness.svc) == []
    assert slots.release_slots(harness.svc, jobs[0]) == [jobs[2]]


def test_max_slots_recount_after_the_lease_catches_a_race(harness: Harness, tenants) -> None:
    c = tenants("c", max_slots=1)
    first, second = queue(harness, c, 2)
    tenancy = harness.svc.tenancy
    tenancy.remember(first, c)
    tenancy.remember(second, c)
    hold(harness, [first])
    assert not tenancy.over_cap(first, c)
    hold(harness, [second])  # granted past the share check by a racing run
    assert tenancy.over_cap(second, c)


def test_daily_units_hold_the_tenant_until_midnight(harness: Harness, tenants) -> None:
    d = tenants("d", daily_units=2.0)
    jobs = queue(harness, d, 3)
    outcomes = [submit.submit_job(harness.svc, j) for j in jobs]
    assert [o.step for o in outcomes] == [Step.DONE, Step.DONE, Step.WAIT]
    assert "daily_units" in (outcomes[2].detail or "")
    assert harness.get(jobs[2]).status == "queued"
    # The refused job gave back its account slots: another tenant's job runs.
    other = harness.job()
    assert submit.submit_job(harness.svc, other).step is Step.DONE
    assert harness.svc.tenancy.units_today(d) == pytest.approx(2.0)


def test_a_tenant_out_of_units_asks_for_no_slots_and_leaves_the_queue(harness: Harness, tenants) -> None:
    d, e = tenants("d", daily_units=1.0), tenants("e")
    first, second = queue(harness, d, 2)
    assert submit.submit_job(harness.svc, first).step is Step.DONE  # d's one unit
    # Before today's units ran out, `second` joined the wait queue (every slot was held).
    running = queue(harness, e, 9)
    hold(harness, running)
    assert not harness.svc.limiter.acquire(second, 1, ahead=60)
    assert not harness.svc.tenancy.reserve_units(d, "probe", 1, "default")  # d is out of units now
    harness.svc.tenancy.refresh()
    outcome = submit.submit_job(harness.svc, second)
    assert outcome.step is Step.WAIT and "daily_units" in (outcome.detail or "")
    # The pump takes d's waiter out of the queue: it would reserve the slot e's job can use.
    assert not harness.svc.limiter.acquire(second, 1, ahead=60)
    (late,) = queue(harness, e, 1)
    assert slots.release_slots(harness.svc, running[0]) == [late]
    assert second not in harness.svc.limiter.waiting()


def test_raising_daily_units_lets_the_tenant_go_on_today(harness: Harness, tenants) -> None:
    d = tenants("d", daily_units=1.0)
    first, second = queue(harness, d, 2)
    assert submit.submit_job(harness.svc, first).step is Step.DONE
    assert submit.submit_job(harness.svc, second).step is Step.WAIT
    with session_scope(harness.svc.sessions) as s:
        s.get(Tenant, d).daily_units = 5.0  # `klingctl tenants set d --daily-units 5`
    harness.svc.tenancy.refresh()
    assert submit.submit_job(harness.svc, second).step is Step.DONE


def test_one_default_tenant_without_caps_leaves_tenancy_idle(harness: Harness) -> None:
    harness.svc.tenancy.refresh()
    assert not harness.svc.tenancy.active
    assert submit.submit_job(harness.svc, harness.job()).step is Step.DONE


def test_a_waiter_of_a_tenant_not_owed_stops_reserving_slots(harness: Harness, tenants) -> None:
    a, b = tenants("a"), tenants("b")
    running = queue(harness, a, 10)
    hold(harness, running)
    (early,) = queue(harness, a, 1)
    # a's job asked a minute ago (before b had work): a starving waiter, it reserves the next slot.
    assert not harness.svc.limiter.acquire(early, 1, ahead=60)
    (late,) = queue(harness, b, 1)
    assert submit.submit_job(harness.svc, late).step is Step.WAIT  # b asks: refused, owed
    harness.svc.tenancy.refresh()
    assert slots.release_slots(harness.svc, running[0]) == [late]
    assert early not in harness.svc.limiter.waiting()
    assert submit.submit_job(harness.svc, late).step is Step.DONE


def test_a_job_bigger_than_its_tenants_cap_fails_with_the_reason(harness: Harness, tenants) -> None:
    c = tenants("c", max_slots=1)
    (job_id,) = queue(harness, c, 1, n=2)  # queued before the cap was lowered
    # An earlier run of it joined the wait queue (before the cap was lowered).
    hold(harness, queue(harness, tenants("e"), 9))
    assert not harness.svc.limiter.acquire(job_id, 2, ahead=60)
    outcome = submit.submit_job(harness.svc, job_id)
    assert outcome.step is Step.FAILED
    assert job_id not in harness.svc.limiter.waiting()  # it reserves nothing any more
    job = harness.get(job_id)
    assert job.status == "failed" and job.error_code == "exceeds_tenant_max_slots"


def test_a_create_sent_again_after_a_lookup_keeps_to_the_tenants_cap(harness: Harness, tenants) -> None:
    c = tenants("c", max_slots=1)
    earlier, running = queue(harness, c, 2)
    # `earlier`'s create may have gone out (a 1303 retry, say): its run skips the gate to look it up.
    with session_scope(harness.svc.sessions) as s:
        s.get(Job, earlier).create_attempts = 1
    hold(harness, [running])  # meanwhile another job of c took c's one slot
    creates = harness.sim.create_count
    outcome = submit.submit_job(harness.svc, earlier)
    # Not found at the provider: a new create would pass the cap, so it waits, sending none.
    assert outcome.step is Step.WAIT and "max_slots" in (outcome.detail or "")
    assert harness.sim.create_count == creates
    job = harness.get(earlier)
    assert job.status == "queued" and job.create_attempts == 0 and job.claim_token is None
    assert earlier not in harness.svc.limiter.holders()
