"""Job priorities: `high`, `normal`, `low` move a job's place in the queue by a bounded time, so
higher ones go first when slots are scarce and none starves (docs/api.md, "Priorities").

A `high` job queues as if it had arrived PRIORITY_STEP_SECONDS earlier, a `low` one as if that much
later: the pump's order (`jobs.queue_at`) and the limiter's tickets both use that time, and the
limiter's starvation rule counts waiting from it. A low job is overtaken only by jobs arriving
within two steps after it. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from kling.errors import FieldError

PRIORITIES = ("high", "normal", "low")
PRIORITY_STEP_SECONDS = 600.0


def parse_priority(value: Any) -> tuple[str, list[FieldError]]:
    """`priority` of a create: null means `normal`."""
    if value is None:
        return "normal", []
    if value not in PRIORITIES:
        return "normal", [FieldError("priority", "enum", f"must be one of {', '.join(PRIORITIES)}")]
    return str(value), []


def queue_ahead(priority: str, step: float = PRIORITY_STEP_SECONDS) -> float:
    """Seconds a job of `priority` queues ahead of its arrival (negative: behind)."""
    return {"high": step, "normal": 0.0, "low": -step}.get(priority, 0.0)
