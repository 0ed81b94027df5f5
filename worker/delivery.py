"""One downstream webhook POST through the archiver's SSRF guard, bounded in time and in bytes.

- Every connection goes through `worker.fetch` with `AnyPublicHost`: we resolve the name, connect
  only to a public address (or any address of a host listed by exact name in
  NOTIFY_ALLOWED_HOSTS; never link-local or metadata ones) and check the socket's peer, so a DNS
  answer that changes after the job was accepted (rebinding) reaches nothing inside. Environment
  proxies are ignored.
- Redirects are not followed: a 3xx is a failed attempt (`redirect`), retried like any other.
- The whole attempt (connect, send, status and headers, body) ends by `deadline_seconds`: a timer
  shuts the socket down when it passes. Per-read timeouts alone would let a receiver that drips a
  byte at a time hold a worker process for ever.
- At most `max_response_bytes` (64 KiB) of the answer are read, then the connection is closed; the
  status line decides, so a 2xx whose body is slow or huge still counts as delivered.
- The outcome is a word of the fixed vocabulary (models/delivery.py), never an exception name.
  Name resolution itself (the system resolver) is outside the timer; it has its own timeouts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import requests
import urllib3

from models.delivery import DeliveryError, status_error
from worker.fetch import AnyPublicHost, Resolver, find_cause, guarded_session, refused_by_guard

MAX_RESPONSE_BYTES = 64 * 1024
CONNECT_TIMEOUT = 5.0
# Well under NOTIFY_LEASE_SECONDS (60), so no second attempt starts while this one may still send.
DEADLINE_SECONDS = 15.0
USER_AGENT = "kling-orchestrator-notify/1"


@dataclass(frozen=True)
class Delivery:
    status: int | None  # the receiver's HTTP status, when it answered
    error: DeliveryError | None  # None: delivered (2xx)


def failure_error(exc: BaseException, *, past_deadline: bool) -> DeliveryError:
    """The vocabulary word for a request that raised `exc` (before a status arrived)."""
    if refused_by_guard(exc):
        return DeliveryError.BLOCKED_ADDRESS
    if past_deadline or isinstance(exc, requests.Timeout):
        return DeliveryError.TIMEOUT
    if isinstance(exc, requests.exceptions.SSLError):
        return DeliveryError.ERROR
    if find_cause(exc, urllib3.exceptions.NewConnectionError) is not None:
        return DeliveryError.REFUSED  # refused, unreachable, or the name does not resolve
    return DeliveryError.ERROR


class _Deadline:
    """Shuts down every socket an attempt opened once its time is up."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.passed = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            passed = self.passed
        if passed:  # connected just as the time ran out
            _shutdown(sock)

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    # Wakes a recv/send blocked in another thread (close() alone would not); OSError: already closed.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class WebhookSender:
    """POSTs events to receivers; a new connection per attempt (deliveries are rare)."""

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        deadline_seconds: float = DEADLINE_SECONDS,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        resolver: Resolver = socket.getaddrinfo,
    ) -> None:
        self.policy = AnyPublicHost(allowed_hosts)
        self.connect_timeout = min(connect_timeout, deadline_seconds)
        self.deadline_seconds = deadline_seconds
        self.max_response_bytes = max_response_bytes
        self.resolver = resolver

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Delivery:
        with _Deadline(self.deadline_seconds) as deadline:
            session = guarded_session(
                self.policy, resolver=self.resolver, on_connect=deadline.watch, user_agent=USER_AGENT
            )
            try:
                response = session.post(
                    url,
                    data=body,
                    headers=dict(headers),
                    timeout=(self.connect_timeout, self.deadline_seconds),
                    allow_redirects=False,
                    stream=True,
                )
            except requests.RequestException as exc:
                session.close()
                return Delivery(None, failure_error(exc, past_deadline=deadline.passed))
            if deadline.passed:
                # Cut mid-headers: the shut-down socket reads as their end, so no answer counts.
                response.close()
                session.close()
                return Delivery(None, DeliveryError.TIMEOUT)
            try:
                # A little of the answer, for receivers that expect it to be read; never more.
                response.raw.read(self.max_response_bytes, decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError):
                pass  # the status has arrived; a body cut short (or by the deadline) changes nothing
            finally:
                response.close()
                session.close()
        return Delivery(response.status_code, status_error(response.status_code))
