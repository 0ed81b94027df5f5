"""Downstream endpoint health: a `webhook_url` that fails every delivery for
`DISABLE_AFTER_SECONDS` (5 days) is no longer called, with a `delivery.disabled` alert; a delivery
that goes through clears its failing time; a replay (webhook/deliveries.py) enables it again.
`should_disable` decides; the rest reads and writes the `webhook_endpoints` row."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.events import DISABLE_AFTER_SECONDS
from models.tables import WebhookEndpoint


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def should_disable(failing_since: datetime | None, now: datetime) -> bool:
    return failing_since is not None and now - failing_since >= timedelta(seconds=DISABLE_AFTER_SECONDS)


def is_disabled(s: Session, url: str) -> bool:
    return (
        s.scalar(select(WebhookEndpoint.disabled_at).where(WebhookEndpoint.url_sha256 == url_key(url)))
        is not None
    )


def record(s: Session, url: str, *, ok: bool, now: datetime) -> datetime | None:
    """Note a delivery's result. Returns the failing-since time when this failure disables the
    endpoint (the caller alerts), else None."""
    key = url_key(url)
    insert = (postgresql if s.get_bind().dialect.name == "postgresql" else sqlite).insert(WebhookEndpoint)
    s.execute(
        insert.values(url_sha256=key, url=url, failing_since=None if ok else now).on_conflict_do_nothing()
    )
    row = s.get(WebhookEndpoint, key, with_for_update=True)
    assert row is not None
    if ok:
        row.failing_since = None
        return None
    row.failing_since = row.failing_since or now
    if row.disabled_at is None and should_disable(row.failing_since, now):
        row.disabled_at = now
        return row.failing_since
    return None


def enable(s: Session, url: str) -> None:
    row = s.get(WebhookEndpoint, url_key(url))
    if row is not None:
        row.disabled_at = row.failing_since = None
