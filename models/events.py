"""Downstream event subscriptions: which job moves a `webhook_url` hears about, and when a failed
delivery is tried again. Pure: no I/O (worker/notify.py delivers, webhook/deliveries.py shows).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kling.errors import FieldError
from models.enums import JobStatus

# Every move a job makes that a subscriber may hear about: `job.<status>`.
EVENTS = tuple(
    f"job.{status.value}"
    for status in (
        JobStatus.SUBMITTED,
        JobStatus.PROCESSING,
        JobStatus.SUCCEEDED,
        JobStatus.ARCHIVED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.EXPIRED,
    )
)
# Without `webhook_events`: how each job ended.
DEFAULT_EVENTS = frozenset({"job.archived", "job.failed", "job.cancelled", "job.expired"})
# Seconds to wait after each failed attempt (Svix's schedule): attempt 1 at once, then 5 s, 5 min,
# 30 min, 2 h, 5 h, 10 h and 10 h; after the 8th failure the delivery is given up.
RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
MAX_ATTEMPTS = len(RETRY_SCHEDULE) + 1
# An endpoint failing every delivery this long is no longer called (a `delivery.disabled` alert).
DISABLE_AFTER_SECONDS = 5 * 86400.0


def event_for(status: JobStatus | str) -> str | None:
    name = f"job.{JobStatus(status).value}"
    return name if name in EVENTS else None


def subscribed(webhook_events: Iterable[str] | None) -> frozenset[str]:
    return DEFAULT_EVENTS if webhook_events is None else frozenset(webhook_events)


def retry_delay(attempts: int) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None: give up."""
    return RETRY_SCHEDULE[attempts - 1] if 1 <= attempts <= len(RETRY_SCHEDULE) else None


def parse_webhook_events(value: Any, *, has_url: bool) -> tuple[list[str] | None, list[FieldError]]:
    """`webhook_events` of a create: null (the default set) or a non-empty list of known events."""
    if value is None:
        return None, []
    if not has_url:
        return None, [FieldError("webhook_events", "requires", "needs a webhook_url to deliver to")]
    if not isinstance(value, list) or not value:
        return None, [
            FieldError("webhook_events", "type", f"must be a non-empty list of {', '.join(EVENTS)}")
        ]
    errors = [
        FieldError(f"webhook_events[{i}]", "enum", f"must be one of {', '.join(EVENTS)}")
        for i, item in enumerate(value)
        if item not in EVENTS
    ]
    if not errors and len(set(value)) != len(value):
        errors.append(FieldError("webhook_events", "unique", "lists an event twice"))
    # Kept in the order of a job's life, whatever order the caller wrote.
    return (None if errors else [e for e in EVENTS if e in value]), errors
