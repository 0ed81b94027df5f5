"""Routing: which accounts a queued job may be created on, in the order to try them. Pure.

An account takes a job when it serves the job's provider and its kind (`kinds` in the accounts
file; every kind by default).

No double billing across accounts: once a create may have gone out on an account (the job has
`create_attempts > 0` and that account recorded), only that account is ever tried again, until it
answers that the task does not exist (then submit counts the attempt as not made).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from models.accounts import Account

KIND_NOT_SERVED = "kind_not_served"
PROVIDER_NOT_CONFIGURED = "provider_not_configured"


@dataclass(frozen=True)
class Route:
    accounts: tuple[str, ...]  # to try, in order
    pinned: bool  # an earlier create may exist on the one account listed
    serving: int  # accounts serving the job's provider and kind at all (disabled ones included)


def pinned_account(account: str | None, create_attempts: int) -> str | None:
    """The account a job must stay on: the one its earlier, possibly delivered, create went to.
    A create counted before accounts were recorded (migration 0006) went to the one account of
    that time: `""`, the first account (`route`), never any account with free slots."""
    if create_attempts <= 0:
        return None
    return account or ""


def serves(account: Account, provider: str, kind: str, *, legacy: bool) -> bool:
    """Whether `account` may take a job of `provider` and `kind`. Legacy (no accounts file): the one
    account serves every provider, as before accounts existed."""
    return (legacy or account.provider == provider) and account.serves_kind(kind)


def route(
    accounts: Sequence[Account],
    provider: str,
    *,
    kind: str,
    pinned: str | None,
    disabled: Collection[str],
    legacy: bool,
) -> Route:
    """The accounts to try for a job of `provider` and `kind`. A pinned job tries its account even
    when it is disabled or no longer lists the kind: only a lookup there can tell whether the
    earlier create made a task; pinned to an account no longer configured, it tries none (and
    waits), never another."""
    names = [a.name for a in accounts]
    if pinned is not None:
        if pinned == "":
            return Route((names[0],), pinned=True, serving=1)
        # An account removed from the file can no longer be asked: nothing to try, the job waits.
        known = (pinned,) if pinned in names else ()
        return Route(known, pinned=True, serving=len(known))
    serving = [a.name for a in accounts if serves(a, provider, kind, legacy=legacy)]
    return Route(tuple(n for n in serving if n not in disabled), pinned=False, serving=len(serving))


def unserved(accounts: Sequence[Account], provider: str, kind: str, *, legacy: bool) -> tuple[str, str]:
    """The failure (code, message) of a job no account serves: its kind, or its provider at all."""
    if any(legacy or a.provider == provider for a in accounts):
        message = f"no account serves kind {kind} (provider {provider}; see kinds in the accounts file)"
        return KIND_NOT_SERVED, message
    return PROVIDER_NOT_CONFIGURED, f"no account serves provider {provider}"


@dataclass(frozen=True)
class Queued:
    """What the pump needs to know of a queued job to place it."""

    slots: int
    provider: str
    kind: str
    pinned: str | None = None  # `pinned_account(...)`: the only account it may go to


def fill(
    order: Sequence[str],
    queued: Mapping[str, Queued],
    free: Mapping[str, int],
    accounts: Sequence[Account],
    held: Collection[str],
    *,
    legacy: bool,
) -> list[str]:
    """The queued jobs to dispatch now, in `order`: each job holding a lease (its submit run died:
    it re-uses the lease), and each other job that fits in the free slots of an account that may
    take it, the first in file order, whose free slots it then uses for the rest of this plan.
    Free slots are per account: a video job does not take the turn of an image job behind it
    because an account serving images only has room. A job no account serves is dispatched so
    that submit fails it with the reason."""
    left = dict(free)
    first = accounts[0].name if accounts else ""
    chosen: list[str] = []
    for job_id in order:
        job = queued[job_id]
        if job_id in held:
            chosen.append(job_id)
            continue
        if job.pinned is not None:
            candidates = [job.pinned or first]
        else:
            candidates = [a.name for a in accounts if serves(a, job.provider, job.kind, legacy=legacy)]
            if not candidates:
                chosen.append(job_id)
                continue
        for name in candidates:
            if left.get(name, 0) >= job.slots:
                left[name] -= job.slots
                chosen.append(job_id)
                break
    return chosen
