"""Where a run's idle slot time went, from the provider's task records (pure; no I/O).

Issue 18 measures utilisation at the provider: busy slot-seconds over slots x the span from the
first create to the last task's end. The slot-seconds missing from that are split here by what
each freed slot was waiting for: the service to learn the task had ended (its callback or a
poll), or the next create after that.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpan:
    """One provider task: it held `slots` from `created` to `ended`."""

    task_id: str
    slots: int
    created: float
    ended: float


@dataclass(frozen=True)
class SlotTimeline:
    busy_slot_seconds: float
    span_seconds: float
    utilisation: float  # busy / (slots x span): issue 18's measure
    idle_until_known: float  # slot-seconds between a task's end and the service learning of it
    idle_after_known: float  # slot-seconds from then until the next create took the slot
    idle_at_start: float  # slot-seconds before the first creates filled the account
    idle_at_end: float  # slot-seconds freed after the last create (no job was left to start)
    # Seconds from a task's end to the service learning of it, over the tasks with a known time.
    known_after_mean: float = float("nan")
    known_after_p50: float = float("nan")
    known_after_p90: float = float("nan")


def slot_timeline(tasks: Iterable[TaskSpan], slots: int, known: Mapping[str, float]) -> SlotTimeline:
    """`known[task_id]`: when the service recorded the task's end (its task's end when missing).

    Freed slots are matched to later creates oldest first, as the provider's counter would see
    them; which slot a create takes does not change the sums."""
    spans = sorted(tasks, key=lambda t: t.created)
    if not spans:
        nan = float("nan")
        return SlotTimeline(0.0, 0.0, nan, 0.0, 0.0, 0.0, 0.0)
    first, last = spans[0].created, max(t.ended for t in spans)
    busy = sum(t.slots * (t.ended - t.created) for t in spans)
    span = last - first
    # Free slots as (free since, known since), oldest first; `slots` are free at the first create.
    free: list[tuple[float, float]] = [(first, first)] * slots
    ends = sorted(spans, key=lambda t: t.ended)
    until_known = after_known = at_start = 0.0
    e = 0
    for task in spans:
        while e < len(ends) and ends[e].ended <= task.created:
            done = ends[e]
            for _ in range(done.slots):
                heapq.heappush(free, (done.ended, max(done.ended, known.get(done.task_id, done.ended))))
            e += 1
        for _ in range(task.slots):
            if not free:
                break  # the provider allowed more than `slots` (a bug the bench reports elsewhere)
            freed, learnt = heapq.heappop(free)
            if freed == first and learnt == first:
                at_start += task.created - first
                continue
            until_known += max(0.0, min(learnt, task.created) - freed)
            after_known += max(0.0, task.created - max(learnt, freed))
    at_end = sum(last - freed for freed, _ in free)
    at_end += sum(t.slots * (last - t.ended) for t in ends[e:])
    util = busy / (slots * span) if span > 0 else float("nan")
    lags = sorted(max(0.0, known[t.task_id] - t.ended) for t in spans if t.task_id in known)
    nan = float("nan")
    mean = sum(lags) / len(lags) if lags else nan
    p50 = lags[len(lags) // 2] if lags else nan
    p90 = lags[min(len(lags) - 1, len(lags) * 9 // 10)] if lags else nan
    return SlotTimeline(busy, span, util, until_known, after_known, at_start, at_end, mean, p50, p90)
