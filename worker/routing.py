"""Routing: which accounts a queued job may be created on, in the order to try them. Pure.

No double billing across accounts: once a create may have gone out on an account (the job has
`create_attempts > 0` and that account recorded), only that account is ever tried again, until it
answers that the task does not exist (then submit counts the attempt as not made).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from models.accounts import Account


@dataclass(frozen=True)
class Route:
    accounts: tuple[str, ...]  # to try, in order
    pinned: bool  # an earlier create may exist on the one account listed
    serving: int  # accounts serving the job's provider at all (disabled ones included)


def pinned_account(account: str | None, create_attempts: int) -> str | None:
    """The account a job must stay on: the one its earlier, possibly delivered, create went to.
    A create counted before accounts were recorded (migration 0006) went to the one account of
    that time: `""`, the first account (`route`), never any account with free slots."""
    if create_attempts <= 0:
        return None
    return account or ""


def route(
    accounts: Sequence[Account],
    provider: str,
    *,
    pinned: str | None,
    disabled: Collection[str],
    legacy: bool,
) -> Route:
    """The accounts to try for a job of `provider`. A pinned job tries its account even when it is
    disabled: only a lookup there can tell whether the earlier create made a task; pinned to an
    account no longer configured, it tries none (and waits), never another."""
    names = [a.name for a in accounts]
    if pinned is not None:
        if pinned == "":
            return Route((names[0],), pinned=True, serving=1)
        # An account removed from the file can no longer be asked: nothing to try, the job waits.
        known = (pinned,) if pinned in names else ()
        return Route(known, pinned=True, serving=len(known))
    serving = [a.name for a in accounts if legacy or a.provider == provider]
    return Route(tuple(n for n in serving if n not in disabled), pinned=False, serving=len(serving))
