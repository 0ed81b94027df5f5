"""Expected-duration polling's decisions, with no I/O: how long tasks take (`expected`), which
in-flight tasks to ask about now (`due`), whether a list request pays (`wants_list`) and when the
next round should run (`next_round_in`). `worker.polling` does the asking and applying.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from kling.kinds import DEFAULT_KIND

if TYPE_CHECKING:
    from kling import Task

# Below MIN_SAMPLES finished tasks a kind is probed instead (see `due`).
MIN_SAMPLES = 3
# Never ask about one task more often than this, whatever the durations.
MIN_REPOLL_SECONDS = 0.25
# A kind not learned yet is first asked about at this age.
PROBE_FROM_SECONDS = 1.0
# A task past its expected time is asked about again after this fraction of its age: a task stuck
# at the provider for ten minutes costs a request a minute, not one a second.
REPOLL_AGE_FRACTION = 0.1
PROBE_AGE_FRACTION = 0.25
# From this many due tasks on, one list request of the account's newest tasks first.
LIST_FROM = 3
# A round may follow one that asked nothing this soon, when a task is due before the interval ends.
MIN_ROUND_GAP_SECONDS = 0.02
Key = tuple[str, str]  # (provider, model)


@dataclass(frozen=True)
class Expected:
    p50: float
    p90: float


@dataclass(frozen=True)
class InFlight:
    id: str
    task_id: str | None
    key: Key
    submitted_at: datetime
    last_polled_at: datetime | None
    account: str | None = None  # every lookup goes to the account the task was created on
    kind: str = DEFAULT_KIND  # the task kind: which endpoint knows the task


def percentile(ordered: Sequence[float], pct: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def expected(samples: Sequence[float]) -> Expected | None:
    """How long tasks take: p50 and p90 of the samples; None while there are too few."""
    if len(samples) < MIN_SAMPLES:
        return None
    ordered = sorted(samples)
    return Expected(percentile(ordered, 50), percentile(ordered, 90))


def due_at(
    job: InFlight, durations: Mapping[Key, Expected], now: datetime, *, slots_wanted: bool
) -> datetime:
    """When the job's task is next worth a request (see `due`)."""
    age = (now - job.submitted_at).total_seconds()
    exp = durations.get(job.key)
    if exp is None:
        after, repoll = PROBE_FROM_SECONDS, max(MIN_REPOLL_SECONDS, age * PROBE_AGE_FRACTION)
    else:
        after = exp.p50 if slots_wanted else exp.p90
        spacing = exp.p50 * (0.25 if slots_wanted else 0.5)
        repoll = max(MIN_REPOLL_SECONDS, spacing, age * REPOLL_AGE_FRACTION)
    at = job.submitted_at + timedelta(seconds=after)
    if job.last_polled_at is not None:
        at = max(at, job.last_polled_at + timedelta(seconds=repoll))
    return at


def due(
    jobs: Sequence[InFlight],
    durations: Mapping[Key, Expected],
    now: datetime,
    *,
    slots_wanted: bool,
) -> list[InFlight]:
    """The in-flight jobs to ask about now, the longest unheard-of first.

    A task of a learned kind is due once it has run past the kind's p90 (its p50 while queued
    jobs wait for slots: a slot freed early is worth a request), then again every max(0.25 s,
    p50/4 or p50/2, age/10). A kind not learned yet is probed: from 1 s on, every quarter of the
    task's age, so its first tasks are found within a quarter of their length and teach the rest.
    """
    chosen = [
        (job.last_polled_at or job.submitted_at, job)
        for job in jobs
        if due_at(job, durations, now, slots_wanted=slots_wanted) <= now
    ]
    chosen.sort(key=lambda pair: pair[0])
    return [job for _, job in chosen]


def wants_list(due_count: int, in_flight: int, *, slots_wanted: bool) -> bool:
    """Whether a round asks for a task list before single lookups.

    A list request costs what one lookup costs and answers every task on its page, so it goes first
    from LIST_FROM due tasks on, or from two tasks in flight while jobs wait for slots (a task that
    ended early is found with the due one).
    """
    return due_count >= LIST_FROM or (slots_wanted and due_count >= 1 and in_flight >= 2)


@dataclass
class PollReport:
    due: int = 0
    requests: int = 0
    list_requests: int = 0
    changed: list[str] = field(default_factory=list)
    rate_limited: bool = False
    skipped: bool = False
    next_due_at: datetime | None = None  # when the next in-flight task is due, if it is not yet


def next_round_in(report: PollReport, started: datetime, interval: float) -> float:
    """Seconds from a round's start to the next round.

    The interval after a round that asked the provider (the request budget is per interval) or
    when nothing is due before it; sooner when the next task is due sooner (a round on the grid
    would find its end up to a whole interval late), but never within MIN_ROUND_GAP_SECONDS.
    """
    if report.requests or report.next_due_at is None or report.next_due_at <= started:
        return interval
    until = (report.next_due_at - started).total_seconds()
    return min(interval, max(MIN_ROUND_GAP_SECONDS, until))


def next_due(
    jobs: Sequence[InFlight],
    answered: Mapping[str, Task],
    durations: Mapping[Key, Expected],
    now: datetime,
    *,
    slots_wanted: bool,
) -> datetime | None:
    """When the next of these in-flight tasks is due, counting those a round just heard of as
    asked now; a task the round heard has ended is out of flight."""
    times = [
        due_at(
            job if job.id not in answered else replace(job, last_polled_at=now),
            durations,
            now,
            slots_wanted=slots_wanted,
        )
        for job in jobs
        if job.id not in answered or not answered[job.id].status.is_final
    ]
    return min(times, default=None)
