"""Per-process handles to the outside world, built lazily from Settings.

Tasks and the webhook get the database, the provider client, the limiter and S3 from here; tests
and the demo pass any of them to the constructor instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from models.accounts import Account
from models.db import SessionFactory
from models.settings import Settings

if TYPE_CHECKING:
    from kling.client import TaskProvider
    from worker.accounts import AccountGate, LocalAccountGate
    from worker.budget import LocalUnitBudget, UnitBudget
    from worker.dispatch_marks import DispatchMarks, LocalDispatchMarks
    from worker.fetch import SafeFetcher
    from worker.limiter import SlotLimiter
    from worker.poll_gate import LocalPollGate, PollGate
    from worker.polling import DurationCache
    from worker.tenancy import Tenancy

Publish = Callable[[str, list[Any]], None]
# The poll and account gates' Redis calls, as bounded as the limiter's (worker/limiter.py).
GATE_TIMEOUT = 2.0
# How stale this process's view of the disabled accounts may be.
DISABLED_TTL_SECONDS = 2.0
# A budgeted account's estimate of a task's units: its last UNIT_SAMPLES tasks, re-read each minute.
UNIT_SAMPLES = 50
UNIT_ESTIMATE_TTL_SECONDS = 60.0


class Services:
    """The collaborators of the worker's functions. Each is built from `settings` on first use
    unless given. Outbox rows written in a session of `sessions` are published after its commit
    through `publish` (when set); a factory passed in as `sessions` is used as it is."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        sessions: SessionFactory | None = None,
        provider: TaskProvider | None = None,
        limiter: SlotLimiter | None = None,
        s3: Any = None,
        fetcher: SafeFetcher | None = None,
        publish: Publish | None = None,
        poll_gate: PollGate | LocalPollGate | None = None,
        account_gate: AccountGate | LocalAccountGate | None = None,
        accounts: tuple[Account, ...] | None = None,
        account_providers: dict[str, TaskProvider] | None = None,
        limiters: dict[str, SlotLimiter] | None = None,
        dispatch_marks: DispatchMarks | LocalDispatchMarks | None = None,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self._provider = provider
        self._lock = threading.Lock()
        self._providers: dict[str, TaskProvider] = {}
        # Accounts given without their clients/limiters get them built like the settings' ones.
        self.accounts: tuple[Account, ...] = accounts or settings.accounts
        self.account_names = tuple(a.name for a in self.accounts)
        self._by_name = {a.name: a for a in self.accounts}
        # No file: the one `default` account serves every provider the settings have keys for.
        self.legacy = accounts is None and not settings.kling_accounts_file
        self._account_providers: dict[str, TaskProvider] = dict(account_providers or {})
        self._limiters: dict[str, SlotLimiter] = dict(limiters or {})
        self._disabled: frozenset[str] = frozenset()
        self._disabled_until = float("-inf")
        self._per_slot: dict[str, tuple[float, float | None]] = {}
        if limiter is not None:
            self._limiters.setdefault(self.accounts[0].name, limiter)
        for name, given in (
            ("engine", engine),
            ("sessions", sessions),
            ("limiter", limiter),
            ("s3", s3),
            ("fetcher", fetcher),
            ("poll_gate", poll_gate),
            ("account_gate", account_gate),
            ("dispatch_marks", dispatch_marks),
        ):
            if given is not None:
                self.__dict__[name] = given  # what the cached property would have built

    @cached_property
    def engine(self) -> Engine:
        from models.db import make_engine

        return make_engine(self.settings.database_url)

    @cached_property
    def sessions(self) -> SessionFactory:
        from models.db import make_sessionmaker
        from worker.outbox import publish_after_commit, publish_rows

        factory = make_sessionmaker(self.engine)

        def publish_committed(rows: Any) -> None:
            if self.publish is not None:
                publish_rows(factory, self.publish, rows)

        publish_after_commit(factory, publish_committed)
        return factory

    @cached_property
    def provider(self) -> TaskProvider:
        """The deployment's default provider (`KLING_PROVIDER`)."""
        return self.provider_for(self.settings.kling_provider)

    def provider_for(self, name: str) -> TaskProvider:
        """The client for a job's provider (`kling` or `appypie`), built once per process."""
        if self._provider is not None:
            return self._provider
        with self._lock:
            client = self._providers.get(name)
            if client is None:
                from worker.provider import make_provider

                client = self._providers[name] = make_provider(self.settings, name)
            return client

    def account(self, name: str | None) -> Account:
        """A job's account by name; jobs from before accounts (NULL) and accounts since removed
        from the file fall back to the first one."""
        return self._by_name.get(name or "", self.accounts[0])

    def provider_for_account(self, name: str | None, provider_name: str | None = None) -> TaskProvider:
        """The client of one account (its own credentials and base URL), built once per process."""
        account = self.account(name)
        given = self._account_providers.get(account.name)
        if given is not None:
            return given
        if self.legacy or self._provider is not None:
            return self.provider_for(provider_name or account.provider)
        with self._lock:
            client = self._account_providers.get(account.name)
            if client is None:
                from worker.provider import make_account_provider

                client = self._account_providers[account.name] = make_account_provider(account)
            return client

    def serves(self, account: Account, provider_name: str) -> bool:
        return self.legacy or account.provider == provider_name

    @cached_property
    def limiter(self) -> SlotLimiter:
        """The first account's limiter (the only one in a single-account deployment)."""
        return self.limiter_for(self.accounts[0].name)

    def limiter_for(self, name: str | None) -> SlotLimiter:
        """One limiter per account: its own keys, its own concurrency. The first account keeps the
        unsuffixed keys, so leases taken before accounts existed still count."""
        account = self.account(name)
        with self._lock:
            found = self._limiters.get(account.name)
            if found is None:
                from worker.limiter import RedisSlotLimiter

                prefix = self.settings.limiter_key_prefix
                if account.name != self.accounts[0].name:
                    prefix = f"{prefix}:acct:{account.name}"
                found = self._limiters[account.name] = RedisSlotLimiter(
                    self.settings.limiter_redis_url,
                    limit=account.concurrency,
                    lease_seconds=self.settings.slot_lease_seconds,
                    key_prefix=prefix,
                )
            return found

    def limiters(self) -> dict[str, SlotLimiter]:
        return {name: self.limiter_for(name) for name in self.account_names}

    def release(self, job_id: str) -> bool:
        """Free a job's slots whichever account holds them (release is idempotent): no database
        read to learn its account, one Redis call per account."""
        released = False
        for name in self.account_names:
            released = self.limiter_for(name).release(job_id) or released
        return released

    def renew(self, job_id: str, account: str | None) -> bool:
        return self.limiter_for(account).renew(job_id)

    def disabled_accounts(self) -> frozenset[str]:
        """Accounts the operator disabled (a table), read at most every DISABLED_TTL_SECONDS per
        process: no query per job."""
        now = time.monotonic()
        with self._lock:
            if now < self._disabled_until:
                return self._disabled
        from sqlalchemy import select

        from models.db import session_scope
        from models.tables import DisabledAccount

        with session_scope(self.sessions) as s:
            names = frozenset(s.scalars(select(DisabledAccount.name)))
        with self._lock:
            self._disabled, self._disabled_until = names, now + DISABLED_TTL_SECONDS
        return names

    @cached_property
    def fetcher(self) -> SafeFetcher:
        from worker.fetch import SafeFetcher

        return SafeFetcher(self.settings.archive_allowed_hosts, max_bytes=self.settings.archive_max_bytes)

    @cached_property
    def s3(self) -> Any:
        from worker.s3 import make_s3_client

        return make_s3_client(endpoint_url=self.settings.s3_endpoint_url, region=self.settings.aws_region)

    @cached_property
    def gate_redis(self) -> Any:
        """The Redis client the poll and account gates share (the limiter's Redis)."""
        import redis

        return redis.Redis.from_url(
            self.settings.limiter_redis_url,
            socket_timeout=GATE_TIMEOUT,
            socket_connect_timeout=GATE_TIMEOUT,
        )

    @cached_property
    def durations(self) -> DurationCache:
        """Task durations the poller learned, cached in this process."""
        from worker.polling import DurationCache

        return DurationCache()

    @cached_property
    def poll_gate(self) -> PollGate | LocalPollGate:
        from worker.poll_gate import PollGate

        return PollGate(self.gate_redis, f"{self.settings.limiter_key_prefix}:poll")

    @cached_property
    def budget(self) -> UnitBudget | LocalUnitBudget:
        """Daily unit budgets (worker/budget.py); without Redis (the demo) none is enforced."""
        from worker.budget import LocalUnitBudget, UnitBudget

        if "account_gate" in self.__dict__ and not hasattr(self.account_gate, "_redis"):
            return LocalUnitBudget()
        return UnitBudget(self.gate_redis, f"{self.settings.limiter_key_prefix}:budget")

    @cached_property
    def dispatch_marks(self) -> DispatchMarks | LocalDispatchMarks:
        """The pump's marks on the jobs it just sent (worker/dispatch_marks.py); in one process
        without Redis (the demo), kept in memory."""
        from worker.dispatch_marks import DispatchMarks, LocalDispatchMarks, marks_prefix

        if "account_gate" in self.__dict__ and not hasattr(self.account_gate, "_redis"):
            return LocalDispatchMarks()
        return DispatchMarks(self.gate_redis, marks_prefix(self.settings.limiter_key_prefix))

    @property
    def budgeted(self) -> bool:
        return any(a.daily_unit_budget for a in self.accounts)

    @cached_property
    def tenancy(self) -> Tenancy:
        """Tenants' shares, slot caps and daily units (worker/tenancy.py)."""
        from worker.tenancy import Tenancy

        return Tenancy(self)

    def units_per_slot(self, name: str) -> float | None:
        """The account's recent units per slot (finished jobs), read at most every minute."""
        now = time.monotonic()
        with self._lock:
            cached = self._per_slot.get(name)
            if cached is not None and now < cached[0]:
                return cached[1]
        from sqlalchemy import func, select

        from models.db import session_scope
        from models.tables import Job

        recent = (
            select(Job.units, Job.slots)
            .where(Job.account == name, Job.units.is_not(None))
            .order_by(Job.finished_at.desc())
            .limit(UNIT_SAMPLES)
            .subquery()
        )
        with session_scope(self.sessions) as s:
            units, slots = s.execute(select(func.sum(recent.c.units), func.sum(recent.c.slots))).one()
        value = float(units) / slots if units is not None and slots else None
        with self._lock:
            self._per_slot[name] = (now + UNIT_ESTIMATE_TTL_SECONDS, value)
        return value

    @cached_property
    def account_gate(self) -> AccountGate | LocalAccountGate:
        from worker.accounts import AccountGate

        return AccountGate(
            self.gate_redis,
            f"{self.settings.limiter_key_prefix}:account",
            probe_seconds=self.settings.account_probe_seconds,
        )
