"""Tenants: who jobs are for, with their own API keys (docs/api.md, "Tenants").

A key is `kt_` and 43 random URL-safe characters, shown once when made and stored as its SHA-256:
a key that random cannot be guessed from its digest, so no slow hash is needed (the same reasoning
as GitHub's and Stripe's tokens), and a request's key is found with one indexed lookup.

The `default` tenant has no key: the operator's `API_TOKEN` creates jobs for it unless the request
names another tenant, and sees every tenant's jobs.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.tables import DEFAULT_TENANT, Tenant

KEY_PREFIX = "kt_"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_RULE = "1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit"


class TenantError(ValueError):
    """A tenant command or request that cannot be carried out, with the reason."""


@dataclass(frozen=True)
class Limits:
    """What the scheduler needs of a tenant (worker/tenancy.py)."""

    weight: int = 1
    max_slots: int | None = None
    daily_units: float | None = None


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_hint(key: str) -> str:
    return key[:8]


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise TenantError(f"tenant name {name!r}: must be {NAME_RULE}")
    return name


def check_limits(*, max_slots: int | None, daily_units: float | None, weight: int | None) -> None:
    if max_slots is not None and max_slots < 1:
        raise TenantError("--max-slots must be at least 1")
    if daily_units is not None and not daily_units > 0:
        raise TenantError("--daily-units must be more than 0")
    if weight is not None and not 1 <= weight <= 1000:
        raise TenantError("--weight must be from 1 to 1000")


def create_tenant(
    session: Session,
    name: str,
    *,
    max_slots: int | None = None,
    daily_units: float | None = None,
    weight: int = 1,
) -> tuple[Tenant, str]:
    """A new tenant and its key (returned once: only its digest is kept)."""
    check_name(name)
    check_limits(max_slots=max_slots, daily_units=daily_units, weight=weight)
    key = new_key()
    tenant = Tenant(
        name=name,
        key_sha256=key_digest(key),
        key_hint=key_hint(key),
        max_slots=max_slots,
        daily_units=daily_units,
        weight=weight,
    )
    try:
        with session.begin_nested():
            session.add(tenant)
            session.flush()
    except IntegrityError:
        raise TenantError(f"tenant {name!r} already exists") from None
    return tenant, key


def get_tenant(session: Session, name: str) -> Tenant:
    tenant = session.get(Tenant, name)
    if tenant is None:
        raise TenantError(f"no tenant {name!r} (`klingctl tenants` lists them)")
    return tenant


def rotate_key(session: Session, name: str) -> str:
    """A new key for the tenant; the old one stops working at once."""
    if name == DEFAULT_TENANT:
        raise TenantError("the default tenant has no key: the operator's API_TOKEN stands for it")
    tenant = get_tenant(session, name)
    key = new_key()
    tenant.key_sha256, tenant.key_hint = key_digest(key), key_hint(key)
    return key


def revoke_key(session: Session, name: str) -> None:
    """The tenant's key stops working; its jobs stay (and still run)."""
    tenant = get_tenant(session, name)
    tenant.key_sha256 = tenant.key_hint = None


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant a bearer key belongs to, or None."""
    if not key.startswith(KEY_PREFIX):
        return None
    return session.scalar(select(Tenant.name).where(Tenant.key_sha256 == key_digest(key)))


def all_limits(session: Session) -> dict[str, Limits]:
    rows = session.execute(select(Tenant.name, Tenant.weight, Tenant.max_slots, Tenant.daily_units))
    return {r.name: Limits(r.weight, r.max_slots, r.daily_units) for r in rows}
