"""What the accounts look like right now, for people and the API: state (active, paused with its
code, message and time, or disabled), slots in use, units today; and why a queued job waits
(`waiting_for`). `waiting_for` decides with no I/O; `account_views` reads Redis and the database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from kling.kinds import DEFAULT_KIND, KIND_NAMES
from models.db import session_scope
from models.tables import Job

if TYPE_CHECKING:
    from worker.services import Services

log = logging.getLogger(__name__)

ACTIVE, PAUSED, DISABLED = "active", "paused", "disabled"
BUDGET = "budget"  # the pause reason of an account whose daily unit budget is used up
STATES = (ACTIVE, PAUSED, DISABLED)
ACCOUNT_FIELDS = (
    "name",
    "provider",
    "kinds",
    "state",
    "reason",
    "code",
    "message",
    "since",
    "concurrency",
    "slots_in_use",
    "units_today",
)


@dataclass(frozen=True)
class AccountView:
    name: str
    provider: str
    state: str
    concurrency: int
    code: int | None = None
    message: str = ""
    since: float | None = None  # epoch seconds
    slots_in_use: int | None = None  # None: the limiter did not answer
    units_today: float = 0.0
    kinds: tuple[str, ...] = KIND_NAMES  # task kinds routed to it (`kinds` in the accounts file)

    @property
    def reason(self) -> str | None:
        if self.state == PAUSED:
            return f"paused: {self.code}" if self.code is not None else f"paused: {self.message or 'unknown'}"
        return DISABLED if self.state == DISABLED else None

    def document(self) -> dict[str, Any]:
        """The API's account object: never a credential."""
        since = datetime.fromtimestamp(self.since, UTC).isoformat() if self.since is not None else None
        return {
            "name": self.name,
            "provider": self.provider,
            "kinds": list(self.kinds),
            "state": self.state,
            "reason": self.reason,
            "code": self.code,
            "message": self.message or None,
            "since": since,
            "concurrency": self.concurrency,
            "slots_in_use": self.slots_in_use,
            "units_today": self.units_today,
        }


def waiting_for(
    views: Sequence[AccountView], provider: str, kind: str = DEFAULT_KIND, *, legacy: bool
) -> dict[str, Any] | str | None:
    """Why a queued job of `provider` and `kind` is not submitted: no active account serves it
    (with each serving account's reason), or every active one's slots are full; None when it is
    not waiting. The same accounts as `worker.routing.route` offers the job."""
    serving = [v for v in views if (legacy or v.provider == provider) and kind in v.kinds]
    if not serving:
        return {"reason": "no_account", "accounts": {}}
    active = [v for v in serving if v.state == ACTIVE]
    if not active:
        return {"reason": "no_active_account", "accounts": {v.name: v.reason for v in serving}}
    if all(v.slots_in_use is not None and v.slots_in_use >= v.concurrency for v in active):
        return "slots"
    return None


def units_today(svc: Services) -> dict[str, float]:
    """Units each account's tasks deducted since 00:00 UTC (one grouped query)."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = svc.accounts[0].name
    with session_scope(svc.sessions) as s:
        rows = s.execute(
            select(Job.account, func.sum(Job.units))
            .where(Job.finished_at >= midnight, Job.units.is_not(None))
            .group_by(Job.account)
        ).all()
    totals: dict[str, float] = {}
    for account, units in rows:
        name = account or first
        totals[name] = totals.get(name, 0.0) + float(units or 0.0)
    return totals


def account_views(svc: Services, *, with_units: bool = True) -> list[AccountView]:
    """Every configured account's state now (Redis for pauses and slots, the table for disabled)."""
    disabled = svc.disabled_accounts()
    units = units_today(svc) if with_units else {}
    views = []
    for account in svc.accounts:
        state = svc.account_gate.state(account.name)
        if (
            not state.paused
            and account.daily_unit_budget
            and svc.budget.paused(account.name, datetime.now(UTC), account.daily_unit_budget)
        ):
            state = replace(state, paused=True, message=BUDGET)
        try:
            in_use: int | None = svc.limiter_for(account.name).in_use()
        except Exception as exc:  # noqa: BLE001  (shown as unknown, the rest still answers)
            log.warning("accounts: limiter of %s unavailable: %s", account.name, type(exc).__name__)
            in_use = None
        views.append(
            AccountView(
                name=account.name,
                provider=account.provider,
                state=DISABLED if account.name in disabled else PAUSED if state.paused else ACTIVE,
                concurrency=account.concurrency,
                code=state.code,
                message=state.message,
                since=state.since,
                slots_in_use=in_use,
                units_today=units.get(account.name, 0.0),
                kinds=account.kinds,
            )
        )
    return views
