"""Daily unit budgets (`daily_unit_budget` of an account): a create reserves an estimate of the
units it will cost before it goes out; the task's real `units` settle the reservation when it
ends. A reservation that would pass the budget pauses the account with reason `budget` until
00:00 UTC (the key expires then), and the job goes to another account or waits.

`estimate`, `utc_day` and `seconds_to_midnight` decide, with no I/O; `UnitBudget` keeps the day's
spent units and reservations in Redis, changed only by Lua scripts (atomic across workers).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import redis

log = logging.getLogger(__name__)

# Units per slot assumed for an account with no finished task yet.
DEFAULT_UNITS_PER_SLOT = 1.0
# Keys outlive their day a little, for the settling of tasks that end after midnight.
KEEP_SECONDS = 2 * 86400


def utc_day(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def seconds_to_midnight(now: datetime) -> float:
    now = now.astimezone(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, (midnight - now).total_seconds())


def estimate(slots: int, units_per_slot: float | None) -> float:
    """What a task of `slots` images is expected to cost: the account's recent units per slot."""
    per_slot = units_per_slot if units_per_slot and units_per_slot > 0 else DEFAULT_UNITS_PER_SLOT
    return slots * per_slot


# KEYS: spent (float), reserved (hash job -> estimate), paused (the budget it paused at, until
# midnight: a budget raised since then is tried again). ARGV: job, estimate, budget, keep_s,
# pause_s.  Returns 1 reserved (or already), 0 over budget.
_RESERVE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
local est, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local paused_at = tonumber(redis.call('GET', KEYS[3]) or '-1')
if paused_at >= budget then return 0 end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent + est > budget then
  redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[5]))
  return 0
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
"""
# KEYS: spent, reserved. ARGV: job, units ('' to give the reservation back, 'estimate' to spend
# it as reserved), keep_s.
_SETTLE = """
local est = redis.call('HGET', KEYS[2], ARGV[1])
if not est then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local units = tonumber(est)
if ARGV[2] == '' then units = 0 elseif ARGV[2] ~= 'estimate' then units = tonumber(ARGV[2]) end
redis.call('INCRBYFLOAT', KEYS[1], units - tonumber(est))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class UnitBudget:
    """Spent units per account and UTC day, and the `budget` pause, in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def _keys(self, name: str, day: str) -> list[str]:
        base = f"{self._prefix}:{name}"
        return [f"{base}:spent:{day}", f"{base}:reserved:{day}", f"{base}:budget-paused:{day}"]

    def reserve(self, name: str, job_id: str, units: float, budget: float, now: datetime) -> bool:
        """Reserve `units` of today's budget for the job; False (and the account paused until
        midnight UTC) when that would pass it."""
        keys = self._keys(name, utc_day(now))
        args: list[str | int] = [
            job_id,
            repr(units),
            repr(budget),
            KEEP_SECONDS,
            int(seconds_to_midnight(now)) + 1,
        ]
        return bool(self._reserve(keys=keys, args=args))

    def settle(self, name: str, job_id: str, units: float | None, now: datetime) -> bool:
        """The task ended: replace the job's reservation by what it cost; when the provider did
        not say (None), the estimate stays spent: a budget is a ceiling, never passed by guessing 0."""
        return self._settle_as(name, job_id, "estimate" if units is None else repr(units), now)

    def give_back(self, name: str, job_id: str, now: datetime) -> bool:
        """The create made no task: its reservation returns to the budget."""
        return self._settle_as(name, job_id, "", now)

    def _settle_as(self, name: str, job_id: str, units: str, now: datetime) -> bool:
        # Looked for today and yesterday: a task that ran over midnight.
        for day in (now, now - timedelta(days=1)):
            keys = self._keys(name, utc_day(day))[:2]
            if self._settle(keys=keys, args=[job_id, units, KEEP_SECONDS]):
                return True
        return False

    def spent(self, name: str, now: datetime) -> float:
        return float(self._redis.get(self._keys(name, utc_day(now))[0]) or 0.0)

    def paused(self, name: str, now: datetime, budget: float | None = None) -> bool:
        """Whether today's budget ran out (for `budget`: whether it ran out at that budget or a
        higher one; a budget raised since is not out)."""
        paused_at = self._redis.get(self._keys(name, utc_day(now))[2])
        if paused_at is None:
            return False
        return budget is None or float(paused_at) >= budget


class LocalUnitBudget:
    """No budgets (the demo's embedded broker has no Redis): every reservation fits."""

    def reserve(self, name: str, job_id: str, units: float, budget: float, now: datetime) -> bool:
        return True

    def settle(self, name: str, job_id: str, units: float | None, now: datetime) -> bool:
        return False

    def give_back(self, name: str, job_id: str, now: datetime) -> bool:
        return False

    def spent(self, name: str, now: datetime) -> float:
        return 0.0

    def paused(self, name: str, now: datetime, budget: float | None = None) -> bool:
        return False
