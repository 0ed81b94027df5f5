"""`klingctl accounts`: the provider accounts' state, slots, units today and pack remaining;
`klingctl accounts disable NAME` / `enable NAME` (kept in the database, read by every worker)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from kling.kinds import KIND_NAMES
from klingctl.common import console, db_handles, settings
from klingctl.errors import UsageLine
from klingctl.render import plain
from models.db import session_scope
from models.tables import DisabledAccount
from worker.account_views import AccountView, account_views
from worker.services import Services


def _remaining(svc: Services, view: AccountView) -> str:
    """Online units left, when the provider tells (Kling's free pack query); else "-"."""
    ask = getattr(svc.provider_for_account(view.name, view.provider), "account_costs", None)
    if ask is None:
        return "-"
    try:
        remaining = getattr(ask(), "remaining_online", None)
    except Exception:  # noqa: BLE001  (unsupported, unreachable: unknown, the rest still shows)
        return "-"
    return "-" if remaining is None else f"{remaining:g}"


def _kinds(kinds: tuple[str, ...]) -> str:
    """The task kinds routed to the account; "all" for every registered kind (8 names are long)."""
    return "all" if set(kinds) == set(KIND_NAMES) else ", ".join(kinds)


def accounts_table(svc: Services, views: list[AccountView], *, packs: bool) -> Table:
    table = Table("account", "provider", "kinds", "state", "since", "slots", "units today", "pack remaining")
    for view in views:
        since = datetime.fromtimestamp(view.since, UTC).strftime("%Y-%m-%d %H:%M:%S") if view.since else ""
        in_use = "?" if view.slots_in_use is None else str(view.slots_in_use)
        state = (
            view.state if view.reason is None or view.state != "paused" else f"{view.reason} {view.message}"
        )
        table.add_row(
            plain(view.name),
            view.provider,
            _kinds(view.kinds),
            plain(state.strip()),
            since,
            f"{in_use}/{view.concurrency}",
            f"{view.units_today:g}",
            _remaining(svc, view) if packs else "-",
        )
    return table


def _services() -> Services:
    cfg = settings()
    _, sessions = db_handles(cfg)
    return Services(cfg, sessions=sessions)


def _known(svc: Services, name: str) -> None:
    if name not in svc.account_names:
        raise UsageLine(f"unknown account {name!r} (configured: {', '.join(svc.account_names)})")


@click.group(invoke_without_command=True)
@click.option("--no-packs", is_flag=True, help="Do not ask the provider for the packs' remaining units.")
@click.pass_context
def accounts(ctx: click.Context, *, no_packs: bool) -> None:
    """List the provider accounts: state (active, paused with its code, disabled), slots in use,
    units today and pack remaining when the provider tells."""
    if ctx.invoked_subcommand is not None:
        return
    svc = _services()
    console().print(accounts_table(svc, account_views(svc), packs=not no_packs))


def _set_disabled(name: str, *, disabled: bool) -> Any:
    svc = _services()
    _known(svc, name)
    with session_scope(svc.sessions) as s:
        row = s.get(DisabledAccount, name)
        if disabled and row is None:
            s.add(DisabledAccount(name=name))
        elif not disabled and row is not None:
            s.delete(row)
    return svc


@accounts.command()
@click.argument("name")
def disable(name: str) -> None:
    """Stop creating tasks on account NAME (its running tasks finish; lookups continue)."""
    _set_disabled(name, disabled=True)
    console().print(f"account {name} disabled")


@accounts.command()
@click.argument("name")
def enable(name: str) -> None:
    """Let account NAME take jobs again."""
    _set_disabled(name, disabled=False)
    console().print(f"account {name} enabled")
