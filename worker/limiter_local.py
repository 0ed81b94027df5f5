"""The limiter's semantics (worker/limiter.py) in one process: the single-process demo and unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.limiter import _check_limit, _check_slots, _LimitSetting
from worker.limiter_lua import MAX_OVERTAKEN, PACK_WINDOW


@dataclass
class _Waiter:
    ticket: float
    slots: int
    seen_until: float
    passed_at: float | None = None  # first overtaken at


class LocalSlotLimiter(_LimitSetting):
    """The same semantics in one process (the single-process demo and unit tests)."""

    def __init__(
        self,
        limit: int,
        *,
        lease_seconds: float = 600.0,
        starve_after: float = 10.0,
        waiter_ttl: float = 120.0,
    ) -> None:
        self._limit = _check_limit(limit)
        self.lease_seconds = lease_seconds
        self.starve_after = starve_after
        self.waiter_ttl = waiter_ttl
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[int, float]] = {}
        self._waiters: dict[str, _Waiter] = {}

    def _purge(self, now: float) -> None:
        for holder in [h for h, (_, exp) in self._leases.items() if exp <= now]:
            del self._leases[holder]
        for holder in [h for h, w in self._waiters.items() if w.seen_until <= now]:
            del self._waiters[holder]

    def acquire(self, holder_id: str, slots: int, *, ahead: float = 0.0) -> bool:
        _check_slots(slots, self._limit)
        with self._lock:
            now = time.monotonic()
            self._purge(now)
            if holder_id in self._leases:
                self._leases[holder_id] = (self._leases[holder_id][0], now + self.lease_seconds)
                self._waiters.pop(holder_id, None)
                return True
            me = self._waiters.get(holder_id)
            ticket = me.ticket if me else now - ahead
            passed_at = me.passed_at if me else None
            self._waiters[holder_id] = _Waiter(ticket, slots, now + self.waiter_ttl, passed_at)
            left = self._limit - sum(n for n, _ in self._leases.values())
            if left < slots:
                return False
            queue = self._queue()
            size = min(self._limit, PACK_WINDOW)
            window, beyond = self._servable(queue[:size]), self._servable(queue[size:])
            starving = self._starving_at(now)
            taken: set[str] = set()
            granted: bool | None = None
            for other in self._window_order(window, now):
                w = self._waiters[other]
                if other == holder_id:
                    granted, left = True, left - slots  # and on: who still fits is not overtaken
                elif w.slots <= left or starving(w):  # it fits and goes first, or it reserves
                    left -= w.slots
                    taken.add(other)
                if granted is None and left < slots:
                    return False
            mine = window.index(holder_id) if holder_id in window else len(window)
            passed = [self._waiters[h] for h in window[:mine] if h not in taken and h != holder_id]
            for other in beyond if granted is None else ():
                if other == holder_id:
                    break
                w = self._waiters[other]
                if w.slots <= left or starving(w):
                    left -= w.slots
                elif len(passed) < MAX_OVERTAKEN:
                    passed.append(w)
                else:
                    return False  # the Redis version's bound on one walk
                if left < slots:
                    return False
            if granted is None and slots > left:
                return False
            for w in passed:
                if w.passed_at is None:
                    w.passed_at = now
            self._leases[holder_id] = (slots, now + self.lease_seconds)
            del self._waiters[holder_id]
            return True

    def _queue(self) -> list[str]:
        """Queue order (equal tickets by name, as the Redis version)."""
        return sorted(self._waiters, key=lambda h: (self._waiters[h].ticket, h))

    def _servable(self, holders: list[str]) -> list[str]:
        """Without waiters wanting more than a lowered limit: never served, they neither take nor
        reserve slots (they still hold their place, as in Redis)."""
        return [h for h in holders if self._waiters[h].slots <= self._limit]

    def _starving_at(self, now: float) -> Callable[[_Waiter], bool]:
        def starving(w: _Waiter) -> bool:
            return self.starve_after == 0 or (
                w.passed_at is not None and now - w.passed_at >= self.starve_after
            )

        return starving

    def _window_order(self, window: list[str], now: float) -> list[str]:
        """The head window as acquire serves it: starving waiters first (queue order), then the
        largest first (queue order among equals)."""
        starving = self._starving_at(now)

        def key(rank: int) -> tuple[bool, int, int]:
            w = self._waiters[window[rank]]
            return (not starving(w), 0 if starving(w) else -w.slots, rank)

        return [window[rank] for rank in sorted(range(len(window)), key=key)]

    def serving_order(self, first: int) -> list[str]:
        with self._lock:
            now = time.monotonic()
            self._purge(now)
            queue = self._queue()[:first]
            size = min(self._limit, PACK_WINDOW)
            return self._window_order(self._servable(queue[:size]), now) + queue[size:]

    def release(self, holder_id: str) -> bool:
        with self._lock:
            self._purge(time.monotonic())
            self._waiters.pop(holder_id, None)
            return self._leases.pop(holder_id, None) is not None

    def leave_queue(self, holder_id: str) -> None:
        with self._lock:
            self._waiters.pop(holder_id, None)

    def keep_waiting(self, holder_ids: Sequence[str]) -> None:
        with self._lock:
            now = time.monotonic()
            for holder in holder_ids:
                w = self._waiters.get(holder)
                if w is not None and w.seen_until > now:
                    w.seen_until = now + self.waiter_ttl

    def renew(self, holder_id: str) -> bool:
        with self._lock:
            now = time.monotonic()
            self._purge(now)
            if holder_id not in self._leases:
                return False
            self._leases[holder_id] = (self._leases[holder_id][0], now + self.lease_seconds)
            return True

    def holders(self) -> dict[str, int]:
        with self._lock:
            self._purge(time.monotonic())
            return {h: n for h, (n, _) in self._leases.items()}

    def in_use(self) -> int:
        return sum(self.holders().values())

    def waiting(self, first: int | None = None) -> list[str]:
        with self._lock:
            order = [h for h, _ in sorted(self._waiters.items(), key=lambda kv: (kv[1].ticket, kv[0]))]
        return order if first is None else order[:first]
