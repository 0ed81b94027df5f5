"""Tenants in the worker: gathers what the share decisions need (worker/tenant_share.py) and
keeps each tenant's `max_slots` and `daily_units`.

Nothing here runs while tenancy is idle: one `default` tenant and no caps (the tenants table is
re-read at most every LIMITS_TTL_SECONDS per process). Slots held per tenant are the accounts'
live leases (at most the accounts' concurrency of them) mapped to their jobs' tenants, which this
process remembers (a job's tenant never changes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, exists, literal_column, select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.tables import DEFAULT_TENANT, Job, Tenant
from models.tenants import Limits, all_limits
from worker.budget import estimate
from worker.claims import unclaimed
from worker.tenant_share import Picture, too_big, wait_reason

if TYPE_CHECKING:
    from worker.budget import LocalUnitBudget, UnitBudget
    from worker.services import Services

log = logging.getLogger(__name__)

LIMITS_TTL_SECONDS = 5.0
# How stale the set of tenants with queued jobs may be.
WAITING_TTL_SECONDS = 2.0
# A tenant counts as waiting for slots while it has queued jobs and one of them asked an account
# for slots this recently (refused for lack of them, or granted): a tenant whose jobs cannot start
# for another reason (a paused account) is owed nothing, so nobody waits for it.
WANTED_SECONDS = 120.0
SEP = "\t"  # between tenant and account in the wanting set (neither name holds a tab)
# Jobs whose tenant this process remembers (a job id and a name: a few MB at most).
MAX_REMEMBERED = 200_000


class Tenancy:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._lock = threading.Lock()
        self._limits: dict[str, Limits] = {}
        self._limits_until = float("-inf")
        self._waiting: frozenset[str] = frozenset()
        self._waiting_until = float("-inf")
        self._tenant_of: dict[str, str] = {}
        self._wanted: dict[str, float] = {}  # without Redis (the demo): this process's own

    def refresh(self) -> None:
        """Forget the cached tenants table and queue (tests, and right after `klingctl tenants`)."""
        with self._lock:
            self._limits_until = self._waiting_until = float("-inf")

    # --- the tenants table and the queue ------------------------------------------------------
    def limits(self) -> dict[str, Limits]:
        now = time.monotonic()
        with self._lock:
            if now < self._limits_until:
                return self._limits
        with session_scope(self.svc.sessions) as s:
            limits = all_limits(s)
        with self._lock:
            self._limits, self._limits_until = limits, now + LIMITS_TTL_SECONDS
        return limits

    @cached_property
    def supported(self) -> bool:
        """Shares and caps need PostgreSQL: on SQLite (the embedded demo) a write transaction
        locks the whole file, and the submit's would block the reads made under it."""
        bind = getattr(self.svc.sessions, "kw", {}).get("bind")
        dialect = bind.dialect.name if bind is not None else self.svc.engine.dialect.name
        return bool(dialect != "sqlite")

    @property
    def active(self) -> bool:
        """Whether shares or caps apply at all: another tenant than `default`, or a cap on it."""
        if not self.supported:
            return False
        limits = self.limits()
        if len(limits) > 1:
            return True
        own = limits.get(DEFAULT_TENANT)
        return own is not None and (own.max_slots is not None or own.daily_units is not None)

    @property
    def budgeted(self) -> bool:
        return self.supported and any(limit.daily_units for limit in self.limits().values())

    def with_queued_jobs(self) -> frozenset[str]:
        """Tenants with queued jobs no run owns (one index probe per tenant), cached briefly."""
        now = time.monotonic()
        with self._lock:
            if now < self._waiting_until:
                return self._waiting
        queued: Select[Any] = (
            select(literal_column("1"))
            .where(Job.tenant == Tenant.name, Job.status == literal_column("'queued'"), unclaimed(utcnow()))
            .correlate(Tenant)
        )
        with session_scope(self.svc.sessions) as s:
            names = frozenset(s.scalars(select(Tenant.name).where(exists(queued))))
        with self._lock:
            self._waiting, self._waiting_until = names, now + WAITING_TTL_SECONDS
        return names

    @cached_property
    def _wanted_key(self) -> str:
        return f"{self.svc.settings.limiter_key_prefix}:tenants-wanting"

    def wanted(self, tenant: str, accounts: Iterable[str]) -> None:
        """A job of `tenant` asked these accounts for slots just now."""
        if not self.active:
            return
        now = time.time()
        members = {f"{tenant}{SEP}{account}": now for account in accounts}
        if not members:
            return
        if self._local:
            self._wanted.update(members)
            return
        with self.svc.gate_redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._wanted_key, members)
            pipe.expire(self._wanted_key, int(WANTED_SECONDS) * 2)
            pipe.execute()

    def wanting(self) -> dict[str, frozenset[str]]:
        """The tenants whose jobs asked for slots lately, and the accounts they asked."""
        since = time.time() - WANTED_SECONDS
        if self._local:
            members = [m for m, at in self._wanted.items() if at >= since]
        else:
            raw = self.svc.gate_redis.zrangebyscore(self._wanted_key, since, "+inf")
            members = [m.decode() if isinstance(m, bytes) else m for m in raw]
        out: dict[str, set[str]] = {}
        for member in members:
            tenant, _, account = member.partition(SEP)
            out.setdefault(tenant, set()).add(account)
        return {t: frozenset(accounts) for t, accounts in out.items()}

    @property
    def _local(self) -> bool:
        from worker.budget import LocalUnitBudget

        return isinstance(self.budget, LocalUnitBudget)

    def remember(self, job_id: str, tenant: str) -> None:
        with self._lock:
            if len(self._tenant_of) >= MAX_REMEMBERED:
                self._tenant_of.clear()
            self._tenant_of[job_id] = tenant

    def tenants_of(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        with self._lock:
            found = {j: self._tenant_of[j] for j in ids if j in self._tenant_of}
        missing = [j for j in ids if j not in found]
        if missing:
            with session_scope(self.svc.sessions) as s:
                rows = s.execute(select(Job.id, Job.tenant).where(Job.id.in_(missing))).all()
            for row in rows:
                self.remember(row.id, row.tenant)
                found[row.id] = row.tenant
        return found

    # --- slots --------------------------------------------------------------------------------
    def holders(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for limiter in self.svc.limiters().values():
            held.update(limiter.holders())
        return held

    def picture(self, holders: Mapping[str, int] | None = None) -> Picture:
        held = self.holders() if holders is None else holders
        tenants = self.tenants_of(held)
        used: dict[str, int] = {}
        for job_id, slots in held.items():
            tenant = tenants.get(job_id, DEFAULT_TENANT)
            used[tenant] = used.get(tenant, 0) + slots
        limits = self.limits()
        disabled = self.svc.disabled_accounts() if len(self.svc.account_names) > 1 else frozenset()
        account_slots = {a.name: a.concurrency for a in self.svc.accounts if a.name not in disabled}
        capacity = sum(account_slots.values())
        now = utcnow()
        wanting = self.wanting()
        waiting = frozenset(
            t
            for t in self.with_queued_jobs() & wanting.keys()
            if not self._at_cap(t, limits, used) and not self.out_of_units(t, limits, now)
        )
        return Picture(limits, used, waiting, capacity, wanting, account_slots)

    def startable(self) -> frozenset[str]:
        """Tenants with queued jobs, minus those out of today's units: whose queue heads the pump reads."""
        limits, now = self.limits(), utcnow()
        return frozenset(t for t in self.with_queued_jobs() if not self.out_of_units(t, limits, now))

    @staticmethod
    def _at_cap(tenant: str, limits: Mapping[str, Limits], used: Mapping[str, int]) -> bool:
        cap = limits.get(tenant, Limits()).max_slots
        return cap is not None and used.get(tenant, 0) >= cap

    def wait_reason(self, job_id: str, tenant: str, slots: int, accounts: Collection[str]) -> str | None:
        """Why the job must wait for its tenant's sake before asking `accounts` for slots (None:
        it may ask). A job already holding a lease (its earlier run died) keeps it."""
        self.remember(job_id, tenant)
        if not self.active:
            return None
        held = self.holders()
        if job_id in held:
            return None
        limits = self.limits()
        if self.out_of_units(tenant, limits, utcnow()):
            # Asking for slots would only hold them until the refusal after the lease.
            return f"tenant {tenant} has used today's units (daily_units)"
        return wait_reason(self.picture(held), tenant, slots, accounts)

    def too_big(self, tenant: str, slots: int) -> str | None:
        """Why the job can never start under its tenant's max_slots (None: it can)."""
        if not self.active:
            return None
        limits = self.limits().get(tenant)
        return None if limits is None else too_big(limits, tenant, slots)

    def over_cap(self, job_id: str, tenant: str) -> bool:
        """Right after the job's lease was granted: whether its tenant now holds more than its
        `max_slots`. Every lease counts here, so of two jobs racing past the cap the later one
        always sees the earlier and steps back (the earlier may step back too; it retries)."""
        cap = self.limits().get(tenant, Limits()).max_slots
        if cap is None:
            return False
        held = self.holders()
        tenants = self.tenants_of(held)
        return sum(n for j, n in held.items() if tenants.get(j) == tenant) > cap

    def leave_queues(self, job_id: str, accounts: Collection[str] | None = None) -> None:
        """Out of the wait queue of these accounts (None: every account): a job held back for its
        tenant reserves nothing there."""
        for name, limiter in self.svc.limiters().items():
            if accounts is None or name in accounts:
                limiter.leave_queue(job_id)

    # --- daily units --------------------------------------------------------------------------
    @cached_property
    def budget(self) -> UnitBudget | LocalUnitBudget:
        from worker.budget import LocalUnitBudget, UnitBudget

        if isinstance(self.svc.budget, LocalUnitBudget):
            return LocalUnitBudget()
        return UnitBudget(self.svc.gate_redis, f"{self.svc.settings.limiter_key_prefix}:tenant-budget")

    def out_of_units(self, tenant: str, limits: Mapping[str, Limits], now: datetime) -> bool:
        cap = limits.get(tenant, Limits()).daily_units
        return bool(cap) and self.budget.paused(tenant, now, cap)

    def reserve_units(self, tenant: str, job_id: str, slots: int, account: str) -> bool:
        """Reserve the job's estimated units (`account`'s recent units per slot) of its tenant's
        day; False when that would pass its `daily_units` (the tenant then waits for 00:00 UTC).
        No Redis call without a cap."""
        cap = self.limits().get(tenant, Limits()).daily_units
        if not cap:
            return True
        units = estimate(slots, self.svc.units_per_slot(account))
        if self.budget.reserve(tenant, job_id, units, cap, utcnow()):
            return True
        log.info("tenant %s: today's units (%g) are used up", tenant, cap)
        return False

    def give_back(self, job_id: str) -> None:
        """The create made no task: its units return to its tenant's day."""
        if self.budgeted:
            tenant = self.tenants_of([job_id]).get(job_id)
            if tenant is not None:
                self.budget.give_back(tenant, job_id, utcnow())

    def settle(self, tenant: str, job_id: str, units: float | None) -> None:
        if self.limits().get(tenant, Limits()).daily_units:
            self.budget.settle(tenant, job_id, units, utcnow())

    def units_today(self, tenant: str) -> float:
        return self.budget.spent(tenant, utcnow())


def queued_heads(
    session: Session, tenants: Iterable[str], now: datetime, per_tenant: int, columns: tuple[Any, ...]
) -> dict[str, list[Any]]:
    """Each tenant's first `per_tenant` queued jobs no run owns, in queue order (`ix_jobs_tenant_queue`)."""
    heads: dict[str, list[Any]] = {}
    for tenant in sorted(tenants):
        stmt = (
            select(*columns)
            .where(Job.tenant == tenant, Job.status == literal_column("'queued'"), unclaimed(now))
            .order_by(Job.queue_at, Job.id)
            .limit(per_tenant)
        )
        heads[tenant] = list(session.execute(stmt))
    return heads
