"""Recovery without hammering: a Kling account paused by a dry pack (1102) is asked about its
packs (`provider.account_costs()`, free) at most once per ACCOUNT_PROBE_SECONDS across all workers.
Online units left resume it at once and the queue drains; any other answer (none left, unknown,
unsupported, an error) is inconclusive and leaves recovery to the one probe create submit sends
per ACCOUNT_PROBE_SECONDS (worker/submit.py). `costs_verdict` decides, with no I/O.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from worker import alerts
from worker.accounts import AccountState
from worker.slots import pump

if TYPE_CHECKING:
    from worker.services import Services

log = logging.getLogger(__name__)

# Only a dry pack is something the pack list can clear; arrears, IP whitelist, maintenance are not.
COSTS_TELL = frozenset({1102})


def costs_verdict(costs: object) -> bool:
    """True when the account surely has online units left (`remaining_online` > 0)."""
    remaining = getattr(costs, "remaining_online", None)
    return isinstance(remaining, int | float) and remaining > 0


def probe_paused(svc: Services) -> list[str]:
    """Ask paused Kling accounts about their packs (one turn per account per probe interval);
    resume those with units left, then dispatch queued jobs into their slots. Returns them."""
    resumed: list[str] = []
    for account in svc.accounts:
        if account.provider != "kling":
            continue
        state = svc.account_gate.state(account.name)
        if not state.paused or state.code not in COSTS_TELL:
            continue
        if not svc.account_gate.costs_turn(account.name):
            continue
        ask = getattr(svc.provider_for_account(account.name, account.provider), "account_costs", None)
        try:
            verdict = ask is not None and costs_verdict(ask())
        except Exception as exc:  # noqa: BLE001  (unsupported or failed: inconclusive)
            log.info("account %s: pack query inconclusive: %s", account.name, type(exc).__name__)
            verdict = False
        if verdict and svc.account_gate.resume(account.name):
            log.warning("account %s resumed: its resource packs have units left", account.name)
            alerts.account_changed(svc, alerts.RESUMED, AccountState(account.name, paused=False))
            resumed.append(account.name)
    if resumed:
        pump(svc)
    return resumed
