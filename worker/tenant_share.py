"""Tenants' share of the slots: pure decisions, no I/O (worker/tenancy.py gathers the inputs).

While several tenants have jobs waiting, the slots are shared in proportion to their weights:
each waiting tenant's *share* is the capacity split by weight, water-filled (a tenant capped by
`max_slots` below its split leaves the rest to the others). A tenant holding less than its share
is *owed* slots; while any other tenant is owed, a tenant may not take slots beyond its own share,
so freed slots go to the owed tenants first. Nobody is owed (one tenant waiting, or every waiting
tenant at its share): anyone may take free slots, so no slot idles for fairness' sake. A tenant
holding nothing may always start one job, even one bigger than its share. docs/architecture.md
("Tenants") has the reasoning.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from models.tenants import Limits

NO_LIMITS = Limits()


@dataclass(frozen=True)
class Picture:
    """What the decisions read: every tenant's limits, the slots each holds, the tenants with
    queued jobs they may start (not at their `max_slots`, not out of today's units), the slots of
    the accounts taking jobs."""

    limits: Mapping[str, Limits]
    used: Mapping[str, int]
    waiting: frozenset[str]
    capacity: int
    # The accounts each waiting tenant's jobs asked for slots lately (None: any account).
    wanting: Mapping[str, frozenset[str]] | None = None
    # Each account's slots (None: not known; then every tenant may reach all of `capacity`).
    account_slots: Mapping[str, int] | None = None

    def limits_of(self, tenant: str) -> Limits:
        return self.limits.get(tenant, NO_LIMITS)

    def reach(self, tenants: Collection[str]) -> dict[str, int]:
        """The slots each tenant's jobs can use at most: those of the accounts they asked (a
        tenant whose jobs only a small account serves is owed no more than that account has)."""
        if self.wanting is None or self.account_slots is None:
            return {}
        slots = self.account_slots
        return {t: sum(slots.get(a, 0) for a in self.wanting[t]) for t in tenants if t in self.wanting}


def shares(
    capacity: int,
    limits: Mapping[str, Limits],
    tenants: frozenset[str],
    reach: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Each tenant's share of `capacity`: split by weight, a tenant's `max_slots` (or the slots
    its jobs can `reach`) capping it and the remainder split again among the others (water-filling)."""
    caps = {t: _cap(limits.get(t, NO_LIMITS).max_slots, (reach or {}).get(t)) for t in tenants}
    out: dict[str, float] = {}
    left, open_ = float(capacity), set(tenants)
    while open_:
        total = sum(limits.get(t, NO_LIMITS).weight for t in open_)
        split = {t: left * limits.get(t, NO_LIMITS).weight / total for t in open_}
        capped = {t for t in open_ if (m := caps[t]) is not None and m < split[t]}
        if not capped:
            out.update(split)
            break
        for t in capped:
            out[t] = float(caps[t] or 0)
            left -= out[t]
        open_ -= capped
    return out


def _cap(max_slots: int | None, reach: int | None) -> int | None:
    return min((c for c in (max_slots, reach) if c is not None), default=None)


def share_of(picture: Picture, tenants: frozenset[str]) -> dict[str, float]:
    return shares(picture.capacity, picture.limits, tenants, picture.reach(tenants))


def owed(picture: Picture, among: frozenset[str] | None = None) -> set[str]:
    """The tenants (waiting ones, or `among`) holding less than their share."""
    tenants = picture.waiting if among is None else among
    share = share_of(picture, tenants)
    return {t for t in tenants if picture.used.get(t, 0) < share[t]}


def wait_reason(
    picture: Picture, tenant: str, slots: int, accounts: Collection[str] | None = None
) -> str | None:
    """Why a job of `tenant` needing `slots` must not take slots now on `accounts` (None: it may).
    Only tenants owed slots that want them on one of those accounts hold it back: a tenant whose
    jobs only another account serves cannot use these slots. Its own lease already counts in
    `used`."""
    limits = picture.limits_of(tenant)
    used = picture.used.get(tenant, 0)
    if limits.max_slots is not None and used + slots > limits.max_slots:
        return f"tenant {tenant} holds {used} of its {limits.max_slots} slots (max_slots)"
    if used == 0:
        return None
    among = picture.waiting | {tenant}
    others = {t for t in owed(picture, among) - {tenant} if _wants_any(picture, t, accounts)}
    share = share_of(picture, among)[tenant]
    if not others or used + slots <= share:
        return None
    owed_to = ", ".join(sorted(others))
    return f"tenant {tenant} holds {used} slots, its fair share is {share:g}; owed: {owed_to}"


def accounts_owed(picture: Picture, tenants: Collection[str]) -> frozenset[str] | None:
    """The accounts on which these (owed) tenants want slots (None: any account)."""
    if picture.wanting is None:
        return None
    return frozenset(a for t in tenants for a in picture.wanting.get(t, frozenset()))


def _wants_any(picture: Picture, tenant: str, accounts: Collection[str] | None) -> bool:
    if accounts is None or picture.wanting is None:
        return True
    return not picture.wanting.get(tenant, frozenset()).isdisjoint(accounts)


def too_big(limits: Limits, tenant: str, slots: int) -> str | None:
    """Why a job can never start under its tenant's `max_slots` (None: it can)."""
    if limits.max_slots is not None and slots > limits.max_slots:
        return f"needs {slots} slots; tenant {tenant} may hold at most {limits.max_slots} (max_slots)"
    return None


def fair_order(heads: Mapping[str, Sequence[tuple[str, int]]], picture: Picture) -> list[str]:
    """The queued jobs in the order to offer them slots: each step takes the next job of the
    tenant holding the fewest slots for its weight (counting the jobs already ordered), skipping
    a tenant once its next job would pass its `max_slots`. `heads`: each tenant's first queued
    jobs (id, slots) in its own queue order."""
    held = {t: picture.used.get(t, 0) for t in heads}
    position = dict.fromkeys(heads, 0)
    heap = [(held[t] / picture.limits_of(t).weight, t) for t, jobs in heads.items() if jobs]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, tenant = heapq.heappop(heap)
        job_id, slots = heads[tenant][position[tenant]]
        cap = picture.limits_of(tenant).max_slots
        if cap is not None and slots > cap:
            # It can never start: offered anyway (submit fails it with the reason), holding nothing.
            order.append(job_id)
        elif cap is not None and held[tenant] + slots > cap:
            continue  # its next job cannot start before some of its own end
        else:
            order.append(job_id)
            held[tenant] += slots
        position[tenant] += 1
        if position[tenant] < len(heads[tenant]):
            heapq.heappush(heap, (held[tenant] / picture.limits_of(tenant).weight, tenant))
    return order
