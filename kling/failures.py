"""Why a task failed, as a small set of machine-readable reasons read from `task_status_msg`."""

from __future__ import annotations

import re
from typing import Literal

FailureReason = Literal["content_policy", "timeout", "internal", "other"]
FAILURE_REASONS: tuple[FailureReason, ...] = ("content_policy", "timeout", "internal", "other")

# Kling's wording varies by endpoint and release ("Failure to pass the risk control system",
# "content violates ...", "task timeout", "internal error"); match stems, not whole sentences.
_RULES: tuple[tuple[FailureReason, re.Pattern[str]], ...] = (
    (
        "content_policy",
        re.compile(
            r"risk control|content (?:security|policy|moderation)|sensitive|violat|inappropriate|\b1301\b"
        ),
    ),
    ("timeout", re.compile(r"time ?out|timed out|\b5002\b")),
    ("internal", re.compile(r"internal|server error|system error|service (?:error|unavailable)|\b500[01]\b")),
)


def failure_reason(message: str | None) -> FailureReason:
    """The reason class of a failed task's `task_status_msg` (or 3.0 `message`); `other` if unknown."""
    text = (message or "").lower()
    for reason, pattern in _RULES:
        if pattern.search(text):
            return reason
    return "other"
