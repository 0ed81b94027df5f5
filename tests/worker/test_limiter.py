"""The global concurrency limiter, on the real Redis (db 15) with a key prefix per test."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest
import redis

from worker.limiter import LocalSlotLimiter, RedisSlotLimiter, SlotLimiter

pytestmark = pytest.mark.integration


def poll_until(predicate, *, deadline_seconds: float = 5.0, what: str = "condition"):
    """Poll (not sleep-and-hope) until predicate() is truthy; fail after the deadline."""
    end = time.monotonic() + deadline_seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(params=["redis", "local"])
def make_limiter(request, redis_client, redis_key_prefix):
    """Build a limiter of either kind; both must honour the same contract."""

    def build(limit: int, *, lease_seconds: float = 60.0, starve_after: float = 3600.0) -> SlotLimiter:
        if request.param == "redis":
            return RedisSlotLimiter(
                redis_client,
                limit=limit,
                lease_seconds=lease_seconds,
                key_prefix=redis_key_prefix,
                starve_after=starve_after,
            )
        return LocalSlotLimiter(limit, lease_seconds=lease_seconds, starve_after=starve_after)

    return build


def test_grants_up_to_the_limit_and_counts_slots(make_limiter):
    limiter = make_limiter(6)
    assert isinstance(limiter, SlotLimiter)
    assert limiter.acquire("a", 4)
    assert limiter.acquire("b", 2)
    assert not limiter.acquire("c", 1)
    assert limiter.in_use() == 6
    assert limiter.holders() == {"a": 4, "b": 2}
    limiter.release("a")
    assert limiter.acquire("c", 1)
    assert limiter.holders() == {"b": 2, "c": 1}


def test_acquire_is_idempotent_per_holder(make_limiter):
    limiter = make_limiter(5)
    assert limiter.acquire("job-1", 3)
    assert limiter.acquire("job-1", 3)  # a redelivered task: same lease, no extra slots
    assert limiter.in_use() == 3
    assert limiter.acquire("job-2", 2)
    assert limiter.acquire("job-1", 3)  # still granted although the limiter is full
    assert limiter.in_use() == 5


def test_release_is_idempotent_and_unknown_holders_are_fine(make_limiter):
    limiter = make_limiter(2)
    assert limiter.acquire("x", 2)
    assert limiter.acquire("w", 1) is False  # a waiter: releasing it frees no lease
    # Only the call that ended a live lease says so (release_slots pumps only then).
    assert limiter.release("x") is True
    assert limiter.release("x") is False
    assert limiter.release("never-seen") is False
    assert limiter.release("w") is False
    assert limiter.in_use() == 0
    assert limiter.acquire("y", 2)


def test_more_slots_than_the_limit_is_an_error(make_limiter):
    limiter = make_limiter(3)
    with pytest.raises(ValueError, match="exceed"):
        limiter.acquire("big", 4)
    with pytest.raises(ValueError):
        limiter.acquire("zero", 0)
    assert limiter.in_use() == 0


def test_limit_can_be_changed(make_limiter):
    limiter = make_limiter(2)
    assert limiter.acquire("a", 2)
    limiter.limit = 4
    assert limiter.acquire("b", 2)
    limiter.limit = 3  # lowering keeps existing leases but refuses new ones until they end
    assert limiter.in_use() == 4
    limiter.release("a")
    assert not limiter.acquire("c", 2)
    assert limiter.acquire("c", 1)
    with pytest.raises(ValueError):
        limiter.limit = 0


def test_expired_leases_free_their_slots_and_renew_extends(make_limiter):
    limiter = make_limiter(3, lease_seconds=0.2)
    assert limiter.acquire("crashed-worker", 3)
    assert not limiter.acquire("next", 1)
    # The holder never releases (its worker died): the lease runs out and the slots come back.
    poll_until(lambda: limiter.in_use() == 0, what="the lease to expire")
    assert limiter.renew("crashed-worker") is False
    assert limiter.acquire("next", 1)
    assert limiter.renew("next") is True
    assert "crashed-worker" not in limiter.holders()


def test_renew_keeps_a_lease_alive_past_its_original_expiry(make_limiter):
    limiter = make_limiter(2, lease_seconds=0.3)
    assert limiter.acquire("alive", 1)
    assert limiter.acquire("dead", 1)
    # Keep renewing "alive" until "dead" (never renewed) has expired: "alive" must still be there.
    poll_until(lambda: limiter.renew("alive") and "dead" not in limiter.holders(), what="dead to expire")
    assert limiter.holders() == {"alive": 1}


def test_strict_fifo_when_starve_after_is_zero(make_limiter):
    limiter = make_limiter(6, starve_after=0)
    for i in range(3):
        assert limiter.acquire(f"small-{i}", 1)
    assert not limiter.acquire("big", 4)  # 3 free, needs 4: it queues
    # Later small jobs would fit, but may not overtake the waiting big one.
    assert not limiter.acquire("late-small", 1)
    limiter.release("small-0")
    assert limiter.acquire("big", 4)
    assert not limiter.acquire("late-small", 1)  # full now: 2 + 4
    limiter.release("small-1")
    assert limiter.acquire("late-small", 1)


def test_small_jobs_backfill_while_a_big_job_has_not_waited_long(make_limiter):
    limiter = make_limiter(6, starve_after=3600)
    for i in range(3):
        assert limiter.acquire(f"small-{i}", 1)
    assert not limiter.acquire("big", 4)
    # The big job has only just started waiting: free capacity is not left idle.
    assert limiter.acquire("late-small", 1)


def test_a_big_job_is_not_starved_by_a_stream_of_small_jobs(make_limiter):
    """n=4 on a limit of 6 while n=1 jobs keep arriving: without the rule there are never 4 free."""
    limiter = make_limiter(6, starve_after=0.05)
    live: list[str] = []
    for i in range(5):
        assert limiter.acquire(f"s{i}", 1)
        live.append(f"s{i}")
    counter = 5
    granted = False
    end = time.monotonic() + 10
    while not granted and time.monotonic() < end:
        granted = limiter.acquire("big", 4)
        if granted:
            break
        # One small job ends and a new one immediately asks for the freed slot.
        limiter.release(live.pop(0))
        if limiter.acquire(f"s{counter}", 1):
            live.append(f"s{counter}")
        counter += 1
    assert granted, "the n=4 job starved"
    assert limiter.in_use() <= 6
    assert limiter.holders()["big"] == 4


def test_a_waiter_that_gave_up_does_not_block_the_queue(redis_client, redis_key_prefix):
    limiter = RedisSlotLimiter(
        redis_client, limit=4, lease_seconds=60, key_prefix=redis_key_prefix, starve_after=0, waiter_ttl=0.2
    )
    assert limiter.acquire("a", 3)
    assert not limiter.acquire("abandoned", 4)  # then its worker dies and it never asks again
    assert not limiter.acquire("small", 1)  # strict FIFO: behind the abandoned waiter
    poll_until(lambda: limiter.acquire("small", 1), what="the abandoned waiter to leave the queue")
    assert "abandoned" not in limiter.waiting()


def test_release_removes_a_queued_holder(make_limiter):
    limiter = make_limiter(2, starve_after=0)
    assert limiter.acquire("a", 2)
    assert not limiter.acquire("cancelled", 2)
    limiter.release("cancelled")  # the job failed while queued
    limiter.release("a")
    assert limiter.acquire("other", 1)


def _hammer(limiter: SlotLimiter, redis_client: redis.Redis, gauge: str, worker: str, rounds: int) -> int:
    """Acquire/release in a loop; a gauge counts slots really held. Returns the max gauge seen."""
    seen = 0
    for i in range(rounds):
        holder = f"{worker}-{i}"
        slots = 1 + (i % 3)
        if not limiter.acquire(holder, slots):
            limiter.release(holder)  # leave the queue, try another holder next round
            continue
        now_held = int(redis_client.incrby(gauge, slots))
        seen = max(seen, now_held)
        redis_client.decrby(gauge, slots)
        limiter.release(holder)
    return seen


def test_never_exceeds_the_limit_under_thread_concurrency(redis_client, redis_key_prefix):
    gauge = f"{redis_key_prefix}:gauge"
    maxima: list[int] = []

    def run(name: str) -> None:
        limiter = RedisSlotLimiter(
            redis_client, limit=4, lease_seconds=60, key_prefix=redis_key_prefix, starve_after=0.01
        )
        maxima.append(_hammer(limiter, redis_client, gauge, name, 150))

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(maxima) == 6
    assert 0 < max(maxima) <= 4
    assert int(redis_client.get(gauge) or 0) == 0


def _process_main(redis_url: str, prefix: str, name: str, rounds: int, results) -> None:
    client = redis.Redis.from_url(redis_url)
    limiter = RedisSlotLimiter(client, limit=3, lease_seconds=60, key_prefix=prefix, starve_after=0.01)
    results.put(_hammer(limiter, client, f"{prefix}:gauge", name, rounds))


def test_never_exceeds_the_limit_across_processes(redis_url, redis_client, redis_key_prefix):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, args=(redis_url, redis_key_prefix, f"p{i}", 200, results))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    maxima = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert 0 < max(maxima) <= 3


def test_key_prefix_isolates_limiters(redis_client, redis_key_prefix):
    a = RedisSlotLimiter(redis_client, limit=2, lease_seconds=60, key_prefix=f"{redis_key_prefix}:a")
    b = RedisSlotLimiter(redis_client, limit=2, lease_seconds=60, key_prefix=f"{redis_key_prefix}:b")
    assert a.acquire("x", 2)
    assert b.acquire("x", 2)
    assert a.in_use() == b.in_use() == 2


def test_accepts_a_url(redis_url, redis_key_prefix):
    limiter = RedisSlotLimiter(redis_url, limit=1, lease_seconds=60, key_prefix=redis_key_prefix)
    holder = uuid.uuid4().hex
    assert limiter.acquire(holder, 1)
    assert limiter.holders() == {holder: 1}
