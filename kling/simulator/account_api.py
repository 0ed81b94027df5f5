"""The account side of `Simulator`: add/configure accounts, top up or dry packs, costs, stats."""

from __future__ import annotations

import threading
import time
from typing import Any

from kling.simulator.accounts import (
    COSTS_INTERVAL_SECONDS,
    DEFAULT,
    AccountBook,
    CreateRefused,
    SimAccount,
    account_view,
    costs_payload,
)
from kling.simulator.config import SimulatorConfig
from kling.simulator.state import SimTask


class AccountsMixin:
    """Mixed into `Simulator`; every method takes the simulator's lock."""

    _lock: threading.RLock
    _accounts: AccountBook
    _config: SimulatorConfig
    _live: dict[str, SimTask]

    def now(self) -> float:
        raise NotImplementedError

    def _advance(self) -> None:
        raise NotImplementedError

    # --- helpers (lock held) ----------------------------------------------------------------------
    def _concurrency_of(self, acct: SimAccount) -> int:
        if acct.name == DEFAULT and acct.concurrency is None:
            return self._config.concurrency
        return acct.concurrency or 0

    def _account_slots(self, name: str) -> int:
        return sum(t.slots for t in self._live.values() if t.account == name and not t.is_final)

    def _account_reserved(self, name: str) -> float:
        return sum(t.units for t in self._live.values() if t.account == name and not t.is_final)

    def _view(self, acct: SimAccount) -> dict[str, Any]:
        self._accounts.refresh(acct, self.now())
        return account_view(
            acct, concurrency=self._concurrency_of(acct), slots_in_use=self._account_slots(acct.name)
        )

    def resolve_account(self, header: str | None) -> tuple[str, int]:
        """(account, service code) of an official-API `Authorization` header."""
        with self._lock:
            return self._accounts.resolve(header, self._config)

    def resolve_gateway_account(self, header: str | None) -> str | None:
        with self._lock:
            return self._accounts.resolve_gateway(header, self._config.subscription_key)

    # --- public -----------------------------------------------------------------------------------
    def add_account(self, name: str, **fields: Any) -> dict[str, Any]:
        """Add an account, or change the given fields of an existing one (`access_key`,
        `secret_key`, `api_key`, `subscription_key`, `concurrency`, `units`, `account_code`,
        `pack_dry_after_creates`, `pack_dry_seconds`). ValueError names a bad field."""
        with self._lock:
            return self._view(self._accounts.upsert(name, fields, self.now()))

    def accounts(self) -> list[dict[str, Any]]:
        """Every account (`default` first) with its pack and stats; secrets masked."""
        with self._lock:
            self._advance()
            return [self._view(a) for a in self._accounts.accounts.values()]

    def account(self, name: str) -> dict[str, Any]:
        """One account; KeyError when there is none by that name."""
        with self._lock:
            self._advance()
            return self._view(self._accounts.get(name))

    def set_pack(self, name: str, *, units: float | None = None, status: str | None = None) -> dict[str, Any]:
        """Top the pack up to `units` (status back to `online`) and/or set its `status`
        (`online`, `runOut`, `expired`, `toBeOnline`)."""
        if units is None and status is None:
            raise ValueError("give units or status")
        with self._lock:
            return self._view(self._accounts.set_pack(name, self.now(), units=units, status=status))

    def account_costs(self, name: str) -> dict[str, Any]:
        """`data` of `GET /account/costs`; CreateRefused(1302) past 1 request/s for the account."""
        with self._lock:
            self._advance()
            acct = self._accounts.get(name)
            tick = time.monotonic()
            if acct.last_costs_at is not None and tick - acct.last_costs_at < COSTS_INTERVAL_SECONDS:
                acct.costs_refused += 1
                raise CreateRefused(1302, "request too fast: at most 1 account costs request per second")
            acct.last_costs_at = tick
            acct.costs_requests += 1
            now = self.now()
            self._accounts.refresh(acct, now)
            return costs_payload(acct, now, self._config.costs_lag_seconds)
