"""Status vocabularies stored as strings (CHECK constraints keep the database honest)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    ARCHIVED = "archived"
    FAILED = "failed"
    # Never created at the provider (nothing billed): cancelled by the caller, or past its deadline.
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.ARCHIVED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class ImageStatus(StrEnum):
    PENDING = "pending"
    ARCHIVED = "archived"
    EXPIRED = "expired"
    FAILED = "failed"


class TransitionSource(StrEnum):
    API = "api"
    WORKER = "worker"
    CALLBACK = "callback"
    POLL = "poll"
    ARCHIVER = "archiver"
    SWEEP = "sweep"


class EventOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REJECTED = "rejected"
    # An unsigned final report: stored, not applied; a provider lookup decides (CONFIRM_JOB).
    UNCONFIRMED = "unconfirmed"


def sql_in(column: str, values: type[StrEnum]) -> str:
    """A CHECK expression limiting a column to an enum's values."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"
