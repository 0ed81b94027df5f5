"""Simulated Kling accounts: credentials, concurrency, a resource pack that depletes, and stats.

Every request is served by the account its credentials name; credentials of no configured
account fall to `default`, which takes its keys and concurrency from the global knobs, so a
simulator with no accounts behaves as it always did. Callers hold the simulator's lock.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt

from kling.simulator.auth import OK, check_authorization, check_subscription_key

DEFAULT = "default"
NAME = re.compile(r"^[a-z0-9-]{1,64}$")
PackStatus = Literal["online", "runOut", "expired", "toBeOnline"]
PACK_STATUSES: tuple[str, ...] = ("online", "runOut", "expired", "toBeOnline")
# An unlimited pack (units None) is reported as this many units, so `/account/costs` always answers.
UNLIMITED_REPORT = 1_000_000.0
# How many past balances to keep for `costs_lag_seconds`.
HISTORY = 2000
# Kling allows `/account/costs` at most once per second per account.
COSTS_INTERVAL_SECONDS = 1.0
SECRET_FIELDS = ("secret_key", "api_key", "subscription_key")
SETTABLE = (
    "access_key",
    "secret_key",
    "api_key",
    "subscription_key",
    "concurrency",
    "units",
    "account_code",
    "pack_dry_after_creates",
    "pack_dry_seconds",
)


class CreateRefused(Exception):
    """A create the account refuses; carries the Kling code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class SimAccount:
    """One account. `concurrency`/keys None on `default` mean: the global knobs."""

    name: str
    access_key: str | None = None
    secret_key: str | None = None
    api_key: str | None = None
    subscription_key: str | None = None
    concurrency: int | None = None
    # Pack balance in units; None = never runs out (the default account, unless set).
    units: float | None = None
    status: PackStatus = "online"
    total: float | None = None
    account_code: int | None = None
    pack_dry_after_creates: int | None = None
    pack_dry_seconds: float | None = None
    # Dry-after-K bookkeeping: creates counted toward K, when the pack comes back (None = never).
    creates_toward_dry: int = 0
    dry_until: float | None = None
    dried: bool = False
    # Stats.
    creates: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    max_slots: int = 0
    units_used: float = 0.0
    costs_requests: int = 0
    costs_refused: int = 0
    last_costs_at: float | None = None
    # (time, reported remaining) after every change, for `costs_lag_seconds`.
    history: list[tuple[float, float]] = field(default_factory=list)

    def remaining_view(self) -> float:
        if self.status == "runOut":
            return 0.0
        if self.units is None:
            return max(UNLIMITED_REPORT - self.units_used, 0.0)
        return self.units

    def note(self, now: float) -> None:
        self.history.append((now, self.remaining_view()))
        del self.history[:-HISTORY]

    def remaining_at(self, when: float) -> float:
        """The balance as it stood at `when` (the oldest known one if earlier)."""
        past = [v for t, v in self.history if t <= when]
        if past:
            return past[-1]
        return self.history[0][1] if self.history else self.remaining_view()


def check_fields(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The account fields, checked; ValueError names the first bad one."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError("name must match [a-z0-9-]+ (at most 64 characters)")
    unknown = set(fields) - set(SETTABLE)
    if unknown:
        raise ValueError(f"unknown account fields: {sorted(unknown)}")
    for key in ("access_key", "secret_key", "api_key", "subscription_key"):
        value = fields.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key} must be a non-empty string or null")
    for key in ("concurrency", "pack_dry_after_creates", "account_code"):
        value = fields.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{key} must be an integer >= 0 or null")
    for key in ("units", "pack_dry_seconds"):
        value = fields.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"{key} must be a number >= 0 or null")
    if name != DEFAULT and "concurrency" in fields and fields["concurrency"] is None:
        raise ValueError("concurrency must be an integer >= 0")
    return fields


class AccountBook:
    """The configured accounts plus `default`."""

    def __init__(self) -> None:
        self.accounts: dict[str, SimAccount] = {DEFAULT: SimAccount(DEFAULT)}

    def get(self, name: str) -> SimAccount:
        try:
            return self.accounts[name]
        except KeyError:
            raise KeyError(f"unknown account {name}") from None

    def upsert(self, name: str, fields: dict[str, Any], now: float) -> SimAccount:
        check_fields(name, fields)
        acct = self.accounts.get(name)
        if acct is None:
            acct = SimAccount(name, concurrency=5)
            self.accounts[name] = acct
        for key, value in fields.items():
            if key == "units":
                self.set_pack(name, now, units=value)
            else:
                setattr(acct, key, value)
        if "pack_dry_after_creates" in fields or "pack_dry_seconds" in fields:
            acct.creates_toward_dry, acct.dried, acct.dry_until = 0, False, None
        acct.note(now)
        return acct

    def set_pack(
        self, name: str, now: float, *, units: float | None = None, status: str | None = None
    ) -> SimAccount:
        """Top up (`units`: the new balance, back `online`) or set the status (`runOut`, ...)."""
        acct = self.get(name)
        if status is not None and status not in PACK_STATUSES:
            raise ValueError(f"status must be one of {list(PACK_STATUSES)}")
        if units is not None:
            if isinstance(units, bool) or not isinstance(units, int | float) or units < 0:
                raise ValueError("units must be a number >= 0")
            acct.units = float(units)
            acct.total = float(units)
            acct.status = "online" if units > 0 else "runOut"
        if status is not None:
            acct.status = status  # type: ignore[assignment]
        acct.dry_until = None
        acct.note(now)
        return acct

    def resolve(self, header: str | None, cfg: Any) -> tuple[str, int]:
        """(account name, service code) for an official-API `Authorization` header."""
        mismatch = OK
        for acct in self.accounts.values():
            if acct.name == DEFAULT:
                continue
            code = check_authorization(
                header, access_key=acct.access_key, secret_key=acct.secret_key, api_key=acct.api_key
            )
            if code == OK:
                return acct.name, OK
            if code != 1000 and acct.access_key and _issuer(header) == acct.access_key:
                mismatch = code  # its access key, but a bad signature, expired or not yet valid
        code = check_authorization(
            header, access_key=cfg.access_key, secret_key=cfg.secret_key, api_key=cfg.api_key
        )
        if OK not in (code, mismatch):
            code = mismatch
        return DEFAULT, code

    def resolve_gateway(self, header: str | None, expected: str | None) -> str | None:
        """The account of an Appy Pie subscription key, or None when it is refused."""
        for acct in self.accounts.values():
            if acct.subscription_key and check_subscription_key(header, acct.subscription_key):
                return acct.name
        return DEFAULT if check_subscription_key(header, expected) else None

    def refresh(self, acct: SimAccount, now: float) -> None:
        """A pack dried by `pack_dry_after_creates` comes back once `pack_dry_seconds` passed."""
        if acct.dry_until is not None and now >= acct.dry_until:
            acct.dry_until = None
            acct.status = "online"
            acct.note(now)


def _issuer(header: str | None) -> str | None:
    token = (header or "").removeprefix("Bearer ").strip()
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.InvalidTokenError:
        return None
    return iss if isinstance(iss, str) else None


def admission_code(
    acct: SimAccount, *, slots: int, cost: float, in_use: int, reserved: float, concurrency: int
) -> int:
    """0 when the account takes a create of `slots` slots costing `cost` units, else Kling's code.

    `reserved` is what the account's unfinished tasks will deduct: a pack cannot cover them twice.
    """
    if acct.status != "online":
        return 1102
    if acct.units is not None and acct.units - reserved < cost:
        return 1102
    if in_use + slots > concurrency:
        return 1303
    return 0


def after_create(acct: SimAccount, now: float, slots_in_use: int) -> None:
    acct.creates += 1
    acct.max_slots = max(acct.max_slots, slots_in_use)
    if acct.pack_dry_after_creates is not None and not acct.dried:
        acct.creates_toward_dry += 1
        if acct.creates_toward_dry >= acct.pack_dry_after_creates:
            acct.dried = True
            acct.status = "runOut"
            seconds = acct.pack_dry_seconds
            acct.dry_until = None if seconds is None else now + seconds
            acct.note(now)


def settle(acct: SimAccount, units: float, now: float) -> None:
    """Deduct what a finished task cost; an emptied pack is `runOut`."""
    if units <= 0:
        return
    acct.units_used += units
    if acct.units is not None:
        acct.units = max(acct.units - units, 0.0)
        if acct.units <= 0 and acct.status == "online":
            acct.status = "runOut"
    acct.note(now)


def ext_key(account: str, external_task_id: str) -> str:
    """External ids are unique per account: the same one may exist once on each."""
    return external_task_id if account == DEFAULT else f"{account}\x00{external_task_id}"


def costs_payload(acct: SimAccount, now: float, lag_seconds: float) -> dict[str, Any]:
    """`data` of `GET /account/costs`, in Kling's shape; the balance is the one `lag_seconds` ago."""
    total = acct.total if acct.total is not None else UNLIMITED_REPORT
    start = acct.history[0][0] if acct.history else now
    pack = {
        "resource_pack_name": f"{acct.name} image pack",
        "resource_pack_id": f"pack-{acct.name}",
        "resource_pack_type": "decreasing_total",
        "total_quantity": total,
        "remaining_quantity": acct.remaining_at(now - lag_seconds),
        "purchase_time": int(start * 1000),
        "effective_time": int(start * 1000),
        "invalid_time": int((start + 30 * 86400) * 1000),
        "status": acct.status,
    }
    return {"code": 0, "msg": "success", "resource_pack_subscribe_infos": [pack]}


def account_view(acct: SimAccount, *, concurrency: int, slots_in_use: int) -> dict[str, Any]:
    """What `/_sim/accounts` shows: settings (secrets masked), pack, stats."""
    out: dict[str, Any] = {
        "name": acct.name,
        "access_key": acct.access_key,
        "concurrency": concurrency,
        "units": acct.units,
        "status": acct.status,
        "account_code": acct.account_code,
        "pack_dry_after_creates": acct.pack_dry_after_creates,
        "pack_dry_seconds": acct.pack_dry_seconds,
        "pack_dried": acct.dried,
        "creates": acct.creates,
        "refused_by_code": {str(k): v for k, v in acct.refused.items()},
        "slots_in_use": slots_in_use,
        "max_slots_in_use": acct.max_slots,
        "units_used": acct.units_used,
        "costs_requests": acct.costs_requests,
        "costs_refused": acct.costs_refused,
    }
    for key in SECRET_FIELDS:
        out[key] = None if getattr(acct, key) is None else "***"
    return out
