"""Callback delivery: a worker thread POSTs due callbacks in order, faults decided at emission."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import requests

from kling.callbacks import sign_callback

Outcome = Literal["delivered", "failed", "dropped"]


@dataclass(frozen=True)
class CallbackDelivery:
    """One delivery attempt (or a callback the fault knobs dropped)."""

    task_id: str
    url: str
    task_status: str
    outcome: Outcome
    http_status: int | None
    error: str | None
    headers: dict[str, str]
    body: bytes
    at: float  # when the attempt ended (answer, error or drop)
    webhook_id: str
    sent_at: float | None = None  # when the POST started; None for a dropped callback
    duplicate: bool = False
    delayed: bool = False
    reordered: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["body"] = self.body.decode()
        return out


@dataclass
class Pending:
    task_id: str
    url: str
    task_status: str
    body: bytes
    webhook_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    duplicate: bool = False
    delayed: bool = False
    reordered: bool = False


class Dispatcher:
    """Sends callbacks from one thread so their order is the order they were scheduled in."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._deliveries: list[CallbackDelivery] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self.webhook_secret: str | None = None
        self.timeout: float = 5.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        self._session.close()

    def schedule(self, pending: Pending, delay: float = 0.0) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), pending))
            self._cond.notify_all()

    def record_drop(self, pending: Pending) -> None:
        self._record(pending, "dropped", None, "dropped by fault injection", {})

    def deliveries(self) -> list[CallbackDelivery]:
        with self._cond:
            return list(self._deliveries)

    def pending_count(self) -> int:
        with self._cond:
            return len(self._heap)

    def clear(self) -> None:
        with self._cond:
            self._deliveries.clear()
            self._heap.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, pending = heapq.heappop(self._heap)
            self._send(pending)

    def _send(self, pending: Pending) -> None:
        headers = {"Content-Type": "application/json"}
        if self.webhook_secret:
            ts = int(time.time())
            headers["webhook-id"] = pending.webhook_id
            headers["webhook-timestamp"] = str(ts)
            headers["webhook-signature"] = sign_callback(
                self.webhook_secret, pending.webhook_id, ts, pending.body
            )
        sent_at = time.time()
        try:
            resp = self._session.post(pending.url, data=pending.body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            self._record(pending, "failed", None, f"{type(exc).__name__}: {exc}", headers, sent_at=sent_at)
            return
        outcome: Outcome = "delivered" if 200 <= resp.status_code < 300 else "failed"
        self._record(pending, outcome, resp.status_code, None, headers, sent_at=sent_at)

    def _record(
        self,
        pending: Pending,
        outcome: Outcome,
        http_status: int | None,
        error: str | None,
        headers: dict[str, str],
        *,
        sent_at: float | None = None,
    ) -> None:
        delivery = CallbackDelivery(
            task_id=pending.task_id,
            url=pending.url,
            task_status=pending.task_status,
            outcome=outcome,
            http_status=http_status,
            error=error,
            headers=headers,
            body=pending.body,
            at=time.time(),
            webhook_id=pending.webhook_id,
            duplicate=pending.duplicate,
            delayed=pending.delayed,
            reordered=pending.reordered,
            sent_at=sent_at,
        )
        with self._cond:
            self._deliveries.append(delivery)
