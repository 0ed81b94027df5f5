"""The poller's own loop: a round (`worker.polling.poll_overdue`) every POLL_INTERVAL_SECONDS, in a
thread of the beat process.

A round used to be a beat-scheduled Celery task, and it waited for a free pool process: with both
busy archiving, a task's end was known 0.32 s after it on average when every callback was lost, and
the round then held a process that the submits it dispatched were waiting for. Here rounds start
on time and leave the pool to submits and archives (docs/architecture.md, "Expected-duration
polling"). The rounds' Redis lock (`worker.poll_gate`) still keeps one round at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class PollLoop:
    """Run `run_round` in a daemon thread until `stop`: the next round starts the seconds it
    returns after the last one started (`interval` when it returns None or fails; at once when it
    overran). A failing round is logged once per outage and the next one runs on time."""

    def __init__(self, run_round: Callable[[], float | None], interval: float) -> None:
        self._run_round = run_round
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kling-poller", daemon=True)
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failing = 0  # rounds failed in a row: an outage is logged once, not five times a second
        while not self._stopped.is_set():
            started, delay = time.monotonic(), self.interval
            try:
                wanted = self._run_round()
            except Exception:
                if not failing:
                    log.exception("poll round failed; retrying every round")
                failing += 1
            else:
                if failing:
                    log.warning("poll rounds work again after %d failed", failing)
                failing = 0
                delay = self.interval if wanted is None else wanted
            self.rounds += 1
            self._stopped.wait(max(0.0, started + delay - time.monotonic()))
