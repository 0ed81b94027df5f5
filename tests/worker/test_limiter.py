"""The global concurrency limiter, on the real Redis (db 15) with a key prefix per test."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
import uuid

import pytest
import redis

from worker.limiter import RedisSlotLimiter, SlotLimiter
from worker.limiter_local import LocalSlotLimiter
from worker.limiter_lua import MAX_OVERTAKEN, PURGE_CHUNK

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

    def build(
        limit: int, *, lease_seconds: float = 60.0, starve_after: float = 3600.0, waiter_ttl: float = 120.0
    ) -> SlotLimiter:
        if request.param == "redis":
            return RedisSlotLimiter(
                redis_client,
                limit=limit,
                lease_seconds=lease_seconds,
                key_prefix=redis_key_prefix,
                starve_after=starve_after,
                waiter_ttl=waiter_ttl,
            )
        return LocalSlotLimiter(
            limit, lease_seconds=lease_seconds, starve_after=starve_after, waiter_ttl=waiter_ttl
        )

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


def test_the_starvation_clock_starts_at_the_first_overtaking_not_at_the_ticket(make_limiter):
    """A big job that waited its turn in a backlog is not starved: with a clock from its ticket it
    reserved at once and left the free slots idle until enough for it were free (issue 18)."""
    limiter = make_limiter(6, starve_after=3600)
    for i in range(3):
        assert limiter.acquire(f"small-{i}", 1)
    assert not limiter.acquire("big", 4, ahead=7200)  # queued two hours ago, 3 free
    assert limiter.acquire("late-small", 1)  # the first overtaking: its clock starts now
    assert limiter.waiting() == ["big"]


def test_the_head_of_the_queue_is_served_largest_first(make_limiter):
    """Free slots go to the largest waiters that fit among the first `limit` (issue 18: in queue
    order, the small jobs were served first and the big ones left to fragment the slots later)."""
    limiter = make_limiter(4, starve_after=3600)
    assert limiter.acquire("h", 4)
    # Names in queue order too: tickets within one millisecond are ordered by name.
    for name, n in (("a-waiter", 1), ("b-waiter", 1), ("c-waiter", 3)):
        assert not limiter.acquire(name, n)  # full: they queue
    limiter.release("h")
    # 4 free: c (3) goes first, then a (1), the earlier of the two that fit what is left.
    assert not limiter.acquire("b-waiter", 1)
    assert limiter.acquire("c-waiter", 3)
    assert limiter.acquire("a-waiter", 1)
    assert limiter.in_use() == 4 and limiter.waiting() == ["b-waiter"]


def test_beyond_the_head_window_the_free_slots_go_in_queue_order(make_limiter):
    limiter = make_limiter(2, starve_after=3600)  # a window of 2 waiters
    assert limiter.acquire("h", 2)
    for name, n in (("a-waiter", 1), ("b-waiter", 1), ("c-waiter", 2)):
        assert not limiter.acquire(name, n)
    limiter.release("h")
    # c is third: a and b, in the window, fit first.
    assert not limiter.acquire("c-waiter", 2)
    assert limiter.acquire("b-waiter", 1) and limiter.acquire("a-waiter", 1)


def test_a_small_waiter_passed_by_a_larger_one_starts_its_clock(redis_client, redis_key_prefix):
    limiter = RedisSlotLimiter(
        redis_client, limit=4, lease_seconds=600, key_prefix=redis_key_prefix, starve_after=3600
    )
    assert limiter.acquire("h", 4)
    for name, n in (("a-waiter", 2), ("b-small", 1), ("c-big", 3)):
        assert not limiter.acquire(name, n)
    limiter.release("h")
    assert limiter.acquire("c-big", 3)
    # a was ahead in the queue and no longer fits: overtaken, its starvation clock runs; b, ahead
    # too, still fits in the slot c leaves, and is not overtaken.
    assert set(redis_client.hkeys(limiter.keys[5])) == {b"a-waiter"}
    assert limiter.acquire("b-small", 1)


def test_a_waiter_kept_waiting_does_not_lapse(make_limiter):
    """The pump vouches for queued waiters too big for the free slots (they do not ask again)."""
    limiter = make_limiter(2, starve_after=3600, waiter_ttl=0.3)
    assert limiter.acquire("h", 2)
    assert not limiter.acquire("a-waiter", 2)
    end = time.monotonic() + 1.0  # over three waiter_ttl, "a-waiter" never asking
    while time.monotonic() < end:
        limiter.keep_waiting(["a-waiter", "never-queued"])
        time.sleep(0.05)  # the pump's cadence, not a synchronisation
    limiter.release("h")
    assert not limiter.acquire("b-newcomer", 2)  # "a-waiter" is still ahead, and fits
    assert limiter.waiting() == ["a-waiter", "b-newcomer"]


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


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _queue_directly(
    client: redis.Redis, limiter: RedisSlotLimiter, waiters: list[tuple[str, int, int, int]]
) -> None:
    """Write waiters (name, first attempt ms, slots, seen-until ms) straight into the limiter's keys."""
    _, _, waitq, wslots, wseen, _ = limiter.keys
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(waiters), 10_000):
        chunk = waiters[start : start + 10_000]
        pipe.zadd(waitq, {name: ticket for name, ticket, _, _ in chunk})
        pipe.hset(wslots, mapping={name: slots for name, _, slots, _ in chunk})
        pipe.zadd(wseen, {name: seen for name, _, _, seen in chunk})
    pipe.execute()


def test_a_hundred_thousand_waiters_expired_and_live(redis_client, redis_key_prefix):
    """Past ~8,000 expired waiters the old purge's unpack() failed every call, for good."""
    limiter = RedisSlotLimiter(
        redis_client,
        limit=10,
        lease_seconds=600,
        key_prefix=redis_key_prefix,
        starve_after=60,
        waiter_ttl=120,
    )
    for i in range(9):
        assert limiter.acquire(f"h{i}", 1)
    now = _redis_now_ms(redis_client)
    # 100,000 waiters queued ten minutes ago (all starving), one in five still asking.
    waiters = [
        (f"w{i:06d}", now - 600_000 + i, 1, now + 600_000 if i % 5 == 4 else now - 1) for i in range(100_000)
    ]
    _queue_directly(redis_client, limiter, waiters)
    live = [name for name, _, _, seen in waiters if seen > now]
    expired = len(waiters) - len(live)

    assert limiter.holders() == {f"h{i}": 1 for i in range(9)}
    # The one free slot goes to the first live waiter ahead of a newcomer (it fits).
    assert limiter.acquire("late", 1) is False

    queued = redis_client.zcard(limiter.keys[4])
    calls = 2  # holders() and acquire() above
    while queued > len(live) + 1:
        assert limiter.in_use() == 9
        calls += 1
        now_queued = redis_client.zcard(limiter.keys[4])
        assert 0 < queued - now_queued <= PURGE_CHUNK, "a call purged nothing, or more than a chunk"
        queued = now_queued
    assert calls <= expired // PURGE_CHUNK + 1, "expired waiters are purged a chunk per call at least"
    assert redis_client.zcard(limiter.keys[2]) == len(live) + 1
    assert redis_client.hlen(limiter.keys[3]) == len(live) + 1
    assert limiter.waiting() == [*live, "late"]

    # The live waiters keep their order: each head gets the slot a release frees, nobody overtakes.
    assert limiter.acquire(live[0], 1)
    assert limiter.acquire("late", 1) is False
    limiter.release("h0")
    assert limiter.acquire(live[len(live) // 2], 1) is False
    assert limiter.acquire(live[1], 1)
    assert limiter.waiting(2) == [live[2], live[3]]
    assert limiter.release(live[0]) is True
    assert limiter.acquire(live[2], 1)
    assert limiter.holders() == {**{f"h{i}": 1 for i in range(1, 9)}, live[1]: 1, live[2]: 1}


def test_an_expired_waiter_not_purged_yet_neither_counts_nor_keeps_its_place(redis_client, redis_key_prefix):
    limiter = RedisSlotLimiter(
        redis_client, limit=3, lease_seconds=600, key_prefix=redis_key_prefix, starve_after=2, waiter_ttl=120
    )
    assert limiter.acquire("holder", 1)
    now = _redis_now_ms(redis_client)
    live_until, lapsed = now + 600_000, now - 1
    # Two purge chunks of waiters that expired long ago go first, so "gone" and "back" (expired
    # just now) are still in the keys when the two calls below decide (queued behind them all).
    older = [(f"old{i:04d}", now + 60_000, 1, now - 100_000) for i in range(2 * PURGE_CHUNK)]
    queue = [
        ("gone", now - 5_000, 2, lapsed),
        ("mid", now - 4_000, 1, live_until),
        ("back", now - 1_000, 1, lapsed),
        ("after", now - 500, 2, live_until),
    ]
    _queue_directly(redis_client, limiter, [*older, *queue])
    # 2 free: "mid" goes first (1), "after" no longer fits and is passed; "gone" would take both
    # if it still counted.
    assert limiter.acquire("newcomer", 1)
    # "back" asks again after its place lapsed: it queues anew, behind "after".
    assert limiter.acquire("back", 1) is False
    assert limiter.waiting() == ["mid", "after", "back"]


def test_a_long_expired_head_of_the_queue_is_cleared_a_bounded_amount_per_call(
    redis_client, redis_key_prefix
):
    limiter = RedisSlotLimiter(
        redis_client, limit=2, lease_seconds=600, key_prefix=redis_key_prefix, starve_after=0, waiter_ttl=120
    )
    now = _redis_now_ms(redis_client)
    expired = 6 * PURGE_CHUNK
    _queue_directly(
        redis_client, limiter, [(f"x{i:05d}", now - 10_000 + i, 1, now - 1) for i in range(expired)]
    )
    queued, calls, granted = expired, 0, False
    # Strict FIFO, nothing held: the newcomer gets in once no expired waiter is left ahead of it.
    # Each call removes at most a purge chunk (oldest expiry) plus a chunk met at the queue's head.
    while not granted:
        granted = limiter.acquire("newcomer", 1)
        calls += 1
        now_queued = redis_client.zcard(limiter.keys[4]) - (0 if granted else 1)
        assert 0 < queued - now_queued <= 2 * PURGE_CHUNK
        queued = now_queued
        assert calls < expired
    assert queued == 0
    assert calls == expired // (2 * PURGE_CHUNK)
    assert limiter.holders() == {"newcomer": 1}
    assert limiter.waiting() == []


class _SilentServer:
    """A TCP server that accepts connections and never answers: a stalled (SIGSTOPped) Redis."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> _SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()


@pytest.mark.timeout(30)
def test_a_stalled_redis_raises_instead_of_hanging():
    """Built from a URL with the default timeout, as the webhook and the workers build it."""
    with _SilentServer() as server:
        limiter = RedisSlotLimiter(server.url, limit=2, lease_seconds=60)
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            limiter.acquire("job", 1)
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            limiter.release("job")
        assert server.accepted, "the limiter never reached the server: the stall was not exercised"


# --- priorities (models/priorities.py): tickets moved ahead or behind, bounded -------------------------
def test_a_high_priority_waiter_goes_before_earlier_normal_ones(make_limiter):
    limiter = make_limiter(2, starve_after=600)
    assert limiter.acquire("running", 2)
    assert not limiter.acquire("normal", 2)
    assert not limiter.acquire("high", 2, ahead=600)  # arrived later, queues ahead
    assert limiter.waiting() == ["high", "normal"]
    limiter.release("running")
    # `high` is ahead and fits: the slots are its; `normal` may not take them.
    assert not limiter.acquire("normal", 2)
    assert limiter.acquire("high", 2)


def test_a_low_priority_waiter_is_overtaken_only_for_a_bounded_time(make_limiter):
    """A low job queues as if it arrived `step` later: a job arriving later than that goes behind
    it, whatever its priority. Here the step is 0.2 s, so 0.5 s of waiting is past both bounds."""
    limiter = make_limiter(1, starve_after=0)
    assert limiter.acquire("running", 1)
    assert not limiter.acquire("low", 1, ahead=-0.2)
    assert not limiter.acquire("early-normal", 1)  # within the step: ahead of `low`
    assert limiter.waiting() == ["early-normal", "low"]
    time.sleep(0.5)  # the bound under test is time itself: no event to wait for
    assert not limiter.acquire("late-high", 1, ahead=0.2)  # arrived more than 2 steps later: behind
    assert limiter.waiting() == ["early-normal", "low", "late-high"]
    limiter.release("running")
    assert not limiter.acquire("low", 1) and limiter.acquire("early-normal", 1)
    limiter.release("early-normal")
    assert not limiter.acquire("late-high", 1, ahead=0.2) and limiter.acquire("low", 1)


@pytest.mark.parametrize("big_waiters", [MAX_OVERTAKEN, MAX_OVERTAKEN + 1])
def test_one_acquire_overtakes_a_bounded_number_of_waiters(redis_client, redis_key_prefix, big_waiters):
    limiter = RedisSlotLimiter(
        redis_client, limit=6, lease_seconds=600, key_prefix=redis_key_prefix, starve_after=3600
    )
    for i in range(3):
        assert limiter.acquire(f"h{i}", 1)
    now = _redis_now_ms(redis_client)
    _queue_directly(
        redis_client, limiter, [(f"big{i:03d}", now - 1000 + i, 4, now + 600_000) for i in range(big_waiters)]
    )
    granted = limiter.acquire("small", 1)
    # Within the bound the small job uses a free slot and every big job it passed is marked
    # overtaken (their clocks start); past it the call refuses (safe) rather than walk further.
    assert granted is (big_waiters <= MAX_OVERTAKEN)
    assert redis_client.hlen(limiter.keys[5]) == (big_waiters if granted else 0)


def test_the_serving_order_is_the_one_acquire_serves_in(make_limiter):
    """The pump dispatches in it: a starving waiter first, then the head largest first, so what it
    sends is what acquire admits (without the starving one first, nothing it sent fit and the
    queue stalled with every slot free)."""
    limiter = make_limiter(4, starve_after=3600)
    assert limiter.acquire("h", 4)
    for name, n in (("a-small", 1), ("b-mid", 2), ("c-big", 3)):
        assert not limiter.acquire(name, n)
    assert limiter.serving_order(10) == ["c-big", "b-mid", "a-small"]
    limiter.starve_after = 0  # every waiter starving: strict queue order
    assert limiter.serving_order(10) == ["a-small", "b-mid", "c-big"]
    assert limiter.serving_order(2) == ["a-small", "b-mid"]


def test_a_waiter_wanting_more_than_a_lowered_limit_blocks_no_one(make_limiter):
    """It can never be served; reserving its slots (or going first in the window) it would stop
    every grant while the pump, which never sends it, kept it waiting."""
    limiter = make_limiter(4, starve_after=0)  # strict queue order: a waiter ahead reserves at once
    assert limiter.acquire("h", 4)
    assert not limiter.acquire("big", 4)
    limiter.release("h")
    limiter.limit = 2
    assert "big" not in limiter.serving_order(10)
    assert limiter.acquire("small", 1)
