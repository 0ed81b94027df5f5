"""`klingctl tenants`: list the tenants; `create NAME` (prints its API key once), `set NAME`,
`rotate-key NAME`, `revoke-key NAME`. Run where the service's DATABASE_URL is set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from klingctl.common import console, db_handles, settings
from klingctl.errors import UsageLine
from klingctl.render import plain
from models.db import session_scope
from models.enums import JobStatus
from models.tables import Job, Tenant
from models.tenants import TenantError, check_limits, create_tenant, get_tenant, revoke_key, rotate_key

T = TypeVar("T")
LIVE = (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.PROCESSING)
# `--max-slots none` / `--daily-units none`: take the limit away.
NONE = "none"


def _in_session(work: Callable[[Session], T]) -> T:
    _, sessions = db_handles(settings())
    try:
        with session_scope(sessions) as s:
            return work(s)
    except TenantError as exc:
        raise UsageLine(str(exc)) from None


def _limit(kind: Callable[[str], Any]) -> Callable[[str | None], Any]:
    def parse(value: str | None) -> Any:
        if value is None or value.lower() == NONE:
            return value and NONE
        try:
            return kind(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number (or {NONE!r})") from None

    return parse


def _shown(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def tenants_table(session: Session) -> Table:
    counts: dict[tuple[str, str], int] = {
        (row.tenant, row.status): row.n
        for row in session.execute(
            select(Job.tenant, Job.status, func.count().label("n"))
            .where(Job.status.in_([s.value for s in LIVE]))
            .group_by(Job.tenant, Job.status)
        )
    }
    table = Table("tenant", "key", "weight", "max slots", "daily units", "queued", "running", "created")
    for t in session.scalars(select(Tenant).order_by(Tenant.name)):
        running = sum(counts.get((t.name, s.value), 0) for s in LIVE[1:])
        table.add_row(
            plain(t.name),
            f"{t.key_hint}..." if t.key_hint else "-",
            str(t.weight),
            _shown(t.max_slots),
            _shown(t.daily_units),
            str(counts.get((t.name, JobStatus.QUEUED.value), 0)),
            str(running),
            t.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    return table


@click.group(invoke_without_command=True)
@click.pass_context
def tenants(ctx: click.Context) -> None:
    """List the tenants: key hint, weight, limits, jobs queued and running."""
    if ctx.invoked_subcommand is None:
        console().print(_in_session(tenants_table))


LIMIT_OPTIONS = (
    click.option(
        "--max-slots", type=str, default=None, help="Most slots its jobs hold at once ('none': no cap)."
    ),
    click.option(
        "--daily-units", type=str, default=None, help="Most units its jobs use per UTC day ('none': no cap)."
    ),
    click.option(
        "--weight", type=int, default=None, help="Its share of the slots against other tenants' (1-1000)."
    ),
)


def _with_limits(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(LIMIT_OPTIONS):
        command = option(command)
    return command


@tenants.command()
@click.argument("name")
@_with_limits
def create(name: str, max_slots: str | None, daily_units: str | None, weight: int | None) -> None:
    """Create tenant NAME and print its API key (shown once: only its SHA-256 is stored)."""
    slots, units = _limit(int)(max_slots), _limit(float)(daily_units)

    def work(s: Session) -> str:
        _, key = create_tenant(
            s,
            name,
            max_slots=None if slots == NONE else slots,
            daily_units=None if units == NONE else units,
            weight=1 if weight is None else weight,
        )
        return key

    key = _in_session(work)
    console(stderr=True).print(f"tenant {name} created; its API key (shown once, keep it secret):")
    click.echo(key)


@tenants.command(name="set")
@click.argument("name")
@_with_limits
def set_limits(name: str, max_slots: str | None, daily_units: str | None, weight: int | None) -> None:
    """Change tenant NAME's limits or weight (workers see it within seconds)."""
    slots, units = _limit(int)(max_slots), _limit(float)(daily_units)
    if slots is None and units is None and weight is None:
        raise UsageLine("nothing to set: give --max-slots, --daily-units or --weight")

    def work(s: Session) -> None:
        tenant = get_tenant(s, name)
        check_limits(
            max_slots=None if slots in (None, NONE) else slots,
            daily_units=None if units in (None, NONE) else units,
            weight=weight,
        )
        if slots is not None:
            tenant.max_slots = None if slots == NONE else slots
        if units is not None:
            tenant.daily_units = None if units == NONE else units
        if weight is not None:
            tenant.weight = weight

    _in_session(work)
    console().print(f"tenant {name} updated")


@tenants.command(name="rotate-key")
@click.argument("name")
def rotate(name: str) -> None:
    """Give tenant NAME a new API key (printed once); the old key stops working at once."""
    key = _in_session(lambda s: rotate_key(s, name))
    console(stderr=True).print(f"tenant {name}: new API key (shown once, keep it secret):")
    click.echo(key)


@tenants.command(name="revoke-key")
@click.argument("name")
def revoke(name: str) -> None:
    """Stop tenant NAME's API key working (its jobs stay and still run)."""
    _in_session(lambda s: revoke_key(s, name))
    console().print(f"tenant {name}: key revoked")
