"""Who may poll now: one poll round at a time across all workers, and a pause per provider account
after that account answered 1302 (worker/polling.py asks; this module only keeps the state).

`PollGate` keeps it in Redis; `LocalPollGate` in one process (the demo's embedded broker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import redis

# After a 1302 the account's polling pauses, doubling up to the cap while the answers repeat.
PAUSE_FIRST_SECONDS = 2.0
PAUSE_MAX_SECONDS = 60.0
# A job its list request did not show is remembered this long for a lookup of its own.
MISSED_KEEP_SECONDS = 60.0
# Longer than a round normally takes; a beat killed mid-round leaves the lock this long at most.
# A round that outlives it loses it (a second round may start: harmless, answers are idempotent).
ROUND_LOCK_SECONDS = 30.0


def next_pause(last: float | None) -> float:
    """The pause after a 1302: the first one, or the last one doubled up to the cap."""
    return min(PAUSE_MAX_SECONDS, last * 2) if last else PAUSE_FIRST_SECONDS


class PollGate:
    """In Redis: a round lock for all workers; per account a pause and the backoff it doubles; the
    jobs whose task a list request did not show (fallen off its page), for a lookup of their own."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._lock_name = f"{prefix}:round"
        self._missed = f"{prefix}:missed"

    def _pause_key(self, account: str) -> str:
        return f"{self._prefix}:pause:{account}"

    def _backoff_key(self, account: str) -> str:
        return f"{self._prefix}:backoff:{account}"

    def try_round(self) -> Any:
        """A held round lock, or None while another round runs."""
        lock = self._redis.lock(self._lock_name, timeout=ROUND_LOCK_SECONDS, blocking=False)
        return lock if lock.acquire() else None

    def paused(self, accounts: Iterable[str]) -> set[str]:
        """The accounts among these whose polling is paused."""
        names = sorted(set(accounts))
        if not names:
            return set()
        values = self._redis.mget([self._pause_key(name) for name in names])
        return {name for name, value in zip(names, values, strict=True) if value is not None}

    def rate_limited(self, account: str) -> float:
        """Pause the account's polling; returns the pause, doubled while 1302s repeat."""
        last = self._redis.get(self._backoff_key(account))
        pause = next_pause(float(last) if last else None)
        self._redis.set(self._pause_key(account), "1", px=int(pause * 1000))
        self._redis.set(self._backoff_key(account), str(pause), px=int(PAUSE_MAX_SECONDS * 4000))
        return pause

    def answered(self, accounts: Iterable[str]) -> None:
        """These accounts answered without a 1302: their next pause starts from the first again."""
        keys = [self._backoff_key(name) for name in set(accounts)]
        if keys:
            self._redis.delete(*keys)

    def missed(self) -> set[str]:
        """The jobs a list did not show within the last MISSED_KEEP_SECONDS."""
        since = time.time() - MISSED_KEEP_SECONDS
        members: list[bytes | str] = self._redis.zrangebyscore(self._missed, since, "+inf")  # type: ignore[assignment]
        return {m.decode() if isinstance(m, bytes) else m for m in members}

    def note_missed(self, added: Iterable[str], removed: Iterable[str]) -> None:
        """Remember the jobs a list did not show (with the time); forget the ones a lookup answered
        and any older than MISSED_KEEP_SECONDS (a job that ended by callback is never looked up)."""
        added, removed = list(added), list(removed)
        if not added and not removed:
            return
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        if added:
            pipe.zadd(self._missed, dict.fromkeys(added, now))
            pipe.zremrangebyscore(self._missed, "-inf", now - MISSED_KEEP_SECONDS)
            pipe.expire(self._missed, int(MISSED_KEEP_SECONDS))
        if removed:
            pipe.zrem(self._missed, *removed)
        pipe.execute()


class LocalPollGate:
    """The same rules in one process (the demo's embedded broker, which has no Redis)."""

    def __init__(self) -> None:
        self._round = threading.Lock()
        self._paused_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._missed: set[str] = set()

    def try_round(self) -> Any:
        return self._round if self._round.acquire(blocking=False) else None

    def paused(self, accounts: Iterable[str]) -> set[str]:
        now = time.monotonic()
        return {name for name in accounts if self._paused_until.get(name, 0.0) > now}

    def rate_limited(self, account: str) -> float:
        pause = next_pause(self._backoff.get(account))
        self._backoff[account] = pause
        self._paused_until[account] = time.monotonic() + pause
        return pause

    def answered(self, accounts: Iterable[str]) -> None:
        for name in accounts:
            self._backoff.pop(name, None)

    def missed(self) -> set[str]:
        return set(self._missed)

    def note_missed(self, added: Iterable[str], removed: Iterable[str]) -> None:
        self._missed = (self._missed | set(added)) - set(removed)
