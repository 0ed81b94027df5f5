"""Global concurrency limiter: Kling counts concurrency per account in slots (an image task holds `n`).

Every worker process on every host asks the same limiter before creating a provider task, so the
slots in flight never exceed the account limit (docs/architecture.md rule 3).

Semantics shared by both implementations:

- `acquire(holder, slots)` grants a lease of `slots` slots to `holder` (a job id) when
  `in_use + slots <= limit`, subject to the fairness rule below. It never blocks: a refused caller
  retries later (Celery `retry(countdown=...)`) and keeps its place in the queue.
  Re-acquiring a lease the holder already has refreshes it and returns True (the original slot
  count is kept): a redelivered task does not take slots twice.
- Leases expire `lease_seconds` after the last acquire/renew, so a killed worker cannot leak slots.
  Expired leases never count.
- `release(holder)` frees the lease and drops the holder from the wait queue; it is idempotent.

Fairness rule (packing without starvation): every refused holder joins a wait queue ordered by
its ticket: its first attempt, moved `ahead` seconds earlier by a priority (models/priorities.py;
a low priority moves it later). The free slots go in the serving order: the queue's first
min(limit, PACK_WINDOW) waiters largest first (the starving ones before them), then the rest in
queue order. A caller is granted only what is left once every waiter before it in that order
that fits has taken its slots. A waiter before it that does not
fit in what is left may be *overtaken* (a big job while a few slots are free: they are not left
idle), but once it has been overtaken for `starve_after` seconds it *reserves* its slots, and it
gets in as soon as enough leases end. The clock starts at the first overtaking, not at the ticket
(docs/limiter.md says why). `starve_after=0` gives strict FIFO. A waiter that stops asking for
`waiter_ttl` seconds (its worker died, its job was cancelled) leaves the queue so it cannot block
others forever; `keep_waiting` counts one as asking (the pump, for queued jobs it cannot place).

`limit` may be changed at run time (property setter); lowering it never revokes leases, it only
refuses new ones until enough have ended.

At any backlog (Redis): each script call does bounded work. Expired entries are removed at most
PURGE_CHUNK per call, oldest first, and every read checks expiry itself, so one left in the keys
never counts. Every waiter the fairness check counts takes at least one of the free slots, so
acquire reads the queue from its head no further than `limit` + 1 such waiters plus at most
MAX_OVERTAKEN it may overtake: acquire and release are O(log N) in the waiters. The trades: while
more than PURGE_CHUNK expired waiters, or more than MAX_OVERTAKEN waiters too big for the free
slots, sit ahead of a caller, acquire refuses (never grants beyond the rule); the expired ones
are cleared a chunk per call. docs/limiter.md says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.limiter_lua import (
    ACQUIRE,
    HOLDERS,
    KEEP_WAITING,
    LEAVE_QUEUE,
    RELEASE,
    RENEW,
    SERVING_ORDER,
)


@runtime_checkable
class SlotLimiter(Protocol):
    """What the submit task needs from a concurrency limiter."""

    @property
    def limit(self) -> int: ...

    def acquire(self, holder_id: str, slots: int, *, ahead: float = 0.0) -> bool:
        """Take `slots` slots for `holder_id`; True if granted (or already held). `ahead`: seconds
        its ticket is moved ahead of its first attempt (a priority; negative: behind)."""
        ...

    def release(self, holder_id: str) -> bool:
        """Free the holder's lease and its place in the queue (idempotent); True if a live lease ended."""
        ...

    def leave_queue(self, holder_id: str) -> None:
        """Drop the holder's place in the wait queue (its lease, if any, stays): it stops reserving
        slots while it is not asking (a tenant over its share, worker/tenancy.py)."""
        ...

    def keep_waiting(self, holder_ids: Sequence[str]) -> None:
        """Count these waiters as still asking for another `waiter_ttl` (those still queued only):
        the pump vouches for queued jobs it does not dispatch because they do not fit, which
        would otherwise lapse, and lose their place and their clock, without asking again."""
        ...

    def renew(self, holder_id: str) -> bool:
        """Extend a live lease; False if the holder has none (it expired or was released)."""
        ...

    def in_use(self) -> int:
        """Slots held by live leases."""
        ...

    def holders(self) -> dict[str, int]:
        """Live leases: holder id -> slots."""
        ...

    def waiting(self, first: int | None = None) -> list[str]:
        """The wait queue's holders, oldest first; only the `first` of them if given."""
        ...

    def serving_order(self, first: int) -> list[str]:
        """The first `first` waiters in the order `acquire` serves them: the head window's starving
        waiters, then its others largest first, then the rest in queue order."""
        ...


def _check_slots(slots: int, limit: int) -> None:
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    if slots > limit:
        raise ValueError(f"slots ({slots}) exceed the concurrency limit ({limit}); it could never be granted")


def _check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return limit


DEFAULT_SOCKET_TIMEOUT = 2.0


class _LimitSetting:
    """The account's slot limit, checked when set (operators may change it on a live limiter)."""

    _limit: int

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = _check_limit(value)


class RedisSlotLimiter(_LimitSetting):
    """The limiter shared by every process and host, kept in Redis and changed only by Lua scripts.

    Given a URL it builds its own client with `socket_timeout` (connect and read, seconds); a
    client passed in keeps its own settings.
    """

    def __init__(
        self,
        redis_client_or_url: redis.Redis | str,
        *,
        limit: int,
        lease_seconds: float,
        key_prefix: str = "kling:limiter",
        starve_after: float = 10.0,
        waiter_ttl: float = 120.0,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    ) -> None:
        if isinstance(redis_client_or_url, str):
            # Bounded connect and read, one attempt: a stalled Redis (accepting, never answering)
            # raises within `socket_timeout` instead of hanging a request thread; callers retry.
            redis_client_or_url = redis.Redis.from_url(
                redis_client_or_url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0),
            )
        if lease_seconds <= 0 or waiter_ttl <= 0 or starve_after < 0:
            raise ValueError("lease_seconds and waiter_ttl must be > 0, starve_after >= 0")
        self._redis = redis_client_or_url
        self._limit = _check_limit(limit)
        self.lease_seconds = lease_seconds
        self.starve_after = starve_after
        self.waiter_ttl = waiter_ttl
        # The hash tag keeps every key in one Redis Cluster slot, as multi-key scripts require.
        tag = "{" + key_prefix + "}"
        self._keys = [f"{tag}:{name}" for name in ("leases", "slots", "waitq", "wslots", "wseen", "passed")]
        self._acquire = self._redis.register_script(ACQUIRE)
        self._release = self._redis.register_script(RELEASE)
        self._renew = self._redis.register_script(RENEW)
        self._leave_queue = self._redis.register_script(LEAVE_QUEUE)
        self._keep_waiting = self._redis.register_script(KEEP_WAITING)
        self._holders = self._redis.register_script(HOLDERS)
        self._serving_order = self._redis.register_script(SERVING_ORDER)

    @property
    def keys(self) -> list[str]:
        """The Redis keys this limiter uses (for operators and test cleanup)."""
        return list(self._keys)

    def acquire(self, holder_id: str, slots: int, *, ahead: float = 0.0) -> bool:
        _check_slots(slots, self._limit)
        args: list[str | int] = [
            holder_id,
            slots,
            self._limit,
            _ms(self.lease_seconds),
            _ms(self.starve_after),
            _ms(self.waiter_ttl),
            int(ahead * 1000),
        ]
        return bool(self._acquire(keys=self._keys, args=args))

    def release(self, holder_id: str) -> bool:
        return bool(self._release(keys=self._keys, args=[holder_id]))

    def leave_queue(self, holder_id: str) -> None:
        self._leave_queue(keys=self._keys, args=[holder_id])

    def keep_waiting(self, holder_ids: Sequence[str]) -> None:
        if holder_ids:
            self._keep_waiting(keys=self._keys, args=[_ms(self.waiter_ttl), *holder_ids])

    def renew(self, holder_id: str) -> bool:
        return bool(self._renew(keys=self._keys, args=[holder_id, _ms(self.lease_seconds)]))

    def holders(self) -> dict[str, int]:
        flat = self._holders(keys=self._keys)
        return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def in_use(self) -> int:
        return sum(self.holders().values())

    def serving_order(self, first: int) -> list[str]:
        members = self._serving_order(keys=self._keys, args=[self._limit, _ms(self.starve_after), first])
        return [_text(m) for m in members]

    def waiting(self, first: int | None = None) -> list[str]:
        """Holders in the wait queue, oldest first, the `first` of them if given (waiters past
        `waiter_ttl` may still show)."""
        end = -1 if first is None else first - 1
        members: list[bytes | str] = self._redis.zrange(self._keys[2], 0, end)  # type: ignore[assignment]
        return [_text(m) for m in members]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
