"""Marks on the jobs a pump just dispatched, so that another pump does not send them again.

Every slot release pumps (a worker's confirm, the poller, the webhook, reconcile), and a job the
pump dispatched stays queued and unclaimed until its submit message is run: a second pump in
that window sent it again, a wasted run for four jobs in ten of a backlog. A mark lapses after
MARK_SECONDS (a message lost with a killed worker is sent again then) and is cleared by a run
that found no slot, which a later pump may then send at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

MARK_SECONDS = 5.0


def marks_prefix(limiter_key_prefix: str) -> str:
    """Where a deployment's marks live: beside its limiter's keys."""
    return f"{limiter_key_prefix}:dispatched"


class DispatchMarks:
    """The marks in Redis, shared by every process: one `SET NX PX` per job dispatched."""

    def __init__(self, client: Any, prefix: str, *, seconds: float = MARK_SECONDS) -> None:
        self._redis = client
        self._prefix = prefix
        self._ms = int(seconds * 1000)

    def take(self, job_ids: Sequence[str]) -> list[str]:
        """Mark these jobs; returns those no other pump marked lately (all of them if Redis fails:
        a second message costs a run, a missing one an idle slot)."""
        if not job_ids:
            return []
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.set(f"{self._prefix}:{job_id}", 1, nx=True, px=self._ms)
                taken = pipe.execute()
        except RedisError as exc:
            log.warning("dispatch marks unavailable, sending every dispatch: %s", type(exc).__name__)
            return list(job_ids)
        return [job_id for job_id, ok in zip(job_ids, taken, strict=True) if ok]

    def clear(self, job_id: str) -> None:
        """The job's run found no slot: the next pump may send it again."""
        try:
            self._redis.delete(f"{self._prefix}:{job_id}")
        except RedisError as exc:  # the mark lapses on its own
            log.warning("could not clear the dispatch mark of %s: %s", job_id, type(exc).__name__)


class LocalDispatchMarks:
    """The same in one process (the demo's embedded broker)."""

    def __init__(self, *, seconds: float = MARK_SECONDS) -> None:
        self._seconds = seconds
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, job_ids: Sequence[str]) -> list[str]:
        now = time.monotonic()
        with self._lock:
            self._until = {j: t for j, t in self._until.items() if t > now}
            fresh = [j for j in job_ids if j not in self._until]
            self._until.update((j, now + self._seconds) for j in fresh)
        return fresh

    def clear(self, job_id: str) -> None:
        with self._lock:
            self._until.pop(job_id, None)
