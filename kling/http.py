"""HTTP plumbing shared by both clients: pooled session, timeouts, retries, redaction."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter

from kling.errors import (
    InvalidRequestError,
    KlingError,
    ResourceNotFound,
    ServerError,
    TransportError,
    UnexpectedResponseError,
)

log = logging.getLogger("kling")

T = TypeVar("T")
Timeout = float | tuple[float, float]

DEFAULT_TIMEOUT: tuple[float, float] = (5, 30)
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 30.0
# A server's Retry-After is honoured up to this: one asking for an hour must not park the caller.
DEFAULT_MAX_RETRY_AFTER = 60.0
DEFAULT_POOL_SIZE = 10
USER_AGENT = "kling-orchestrator/0.1"
REDACTED = "***"


@dataclass(frozen=True)
class JsonResponse:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first), the one formula every retry uses.

    Exponential with full jitter: uniform in [0, min(cap, base * 2**attempt)). A positive
    `Retry-After` from the server replaces it, capped at `max_retry_after` (stripe-python's
    `_sleep_time_seconds` caps it the same way).
    """
    if retry_after:
        return min(retry_after, max_retry_after)
    # The exponent is bounded so a task retried for a day never overflows a float.
    return rand() * min(cap, base * 2.0 ** min(attempt, 64))


class RetryPolicy:
    """Retries with `backoff`; a provider's `Retry-After` (capped) wins over the computed delay.

    `sleep` and `rand` are injectable so tests record the waits instead of waiting.
    """

    def __init__(
        self,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        sleep: Callable[[float], None] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._sleep = time.sleep if sleep is None else sleep
        self._rand = rand

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        return backoff(
            attempt,
            base=self.backoff_base,
            cap=self.backoff_max,
            retry_after=retry_after,
            max_retry_after=self.max_retry_after,
            rand=self._rand,
        )

    def wait(self, attempt: int, error: KlingError, what: str) -> None:
        seconds = self.delay(attempt, error.retry_after)
        log.warning(
            "%s failed (%s); retry %d/%d in %.2fs", what, error, attempt + 1, self.max_retries, seconds
        )
        self._sleep(seconds)

    def run(self, op: Callable[[], T], what: str) -> T:
        """Run `op`, retrying retryable errors. Only for requests that are safe to repeat."""
        attempt = 0
        while True:
            try:
                return op()
            except KlingError as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                self.wait(attempt, exc, what)
                attempt += 1


def is_ambiguous(error: KlingError) -> bool:
    """The request may have been processed: a network failure or a server-side error."""
    if isinstance(error, TransportError | ServerError):
        return True
    return isinstance(error, UnexpectedResponseError) and error.retryable


def is_not_found(error: KlingError) -> bool:
    return isinstance(error, ResourceNotFound) or (error.code is None and error.http_status == 404)


def is_duplicate_external_id(error: KlingError) -> bool:
    text = error.message.lower()
    return isinstance(error, InvalidRequestError) and "external_task_id" in text and "exist" in text


def create_idempotently(
    policy: RetryPolicy,
    create: Callable[[], T],
    *,
    external_task_id: str | None,
    lookup: Callable[[], T] | None,
    what: str,
) -> T:
    """Create a paid task without ever creating it twice.

    "Not processed" answers (1302, 1303) are retried. After an ambiguous failure the task may
    exist: with an external id we look it up and only create again if the provider says it does
    not exist; without one we give up, because a blind retry could bill twice. An answer that the
    external id already exists means an earlier attempt got through, so that task is returned.
    """
    can_look_up = external_task_id is not None and lookup is not None
    attempt = 0
    while True:
        try:
            return create()
        except KlingError as exc:
            if can_look_up and is_duplicate_external_id(exc):
                assert lookup is not None
                log.info("%s: external_task_id %s already exists; using that task", what, external_task_id)
                return lookup()
            if not exc.retryable or attempt >= policy.max_retries:
                raise
            if is_ambiguous(exc):
                if not can_look_up:
                    raise
                assert lookup is not None
                policy.wait(attempt, exc, what)
                attempt += 1
                try:
                    return lookup()
                except KlingError as lookup_exc:
                    if not is_not_found(lookup_exc):
                        raise lookup_exc from exc
                log.info("%s: no task with external_task_id %s; creating again", what, external_task_id)
                continue
            policy.wait(attempt, exc, what)
            attempt += 1


class HttpTransport:
    """One pooled `requests.Session`, a timeout on every call, secrets scrubbed from error text."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        secrets: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._secrets = secrets
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session

    def redact(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, REDACTED)
        return text

    def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> JsonResponse:
        """One request: `TransportError` on network failure, `UnexpectedResponseError` on non-JSON."""
        url = self.base_url + path
        all_headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        all_headers.update(headers)
        try:
            resp = self.session.request(
                method, url, headers=all_headers, json=json_body, params=params, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise TransportError(self.redact(f"{method} {path}: {type(exc).__name__}: {exc}")) from None
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        try:
            body = json.loads(resp.content)
        except ValueError:
            snippet = self.redact(resp.text[:200]) if resp.content else "(empty body)"
            raise UnexpectedResponseError(
                f"{method} {path}: answer is not JSON: {snippet!r}",
                http_status=resp.status_code,
                retry_after=retry_after,
            ) from None
        return JsonResponse(status=resp.status_code, body=body, headers=resp.headers)

    def close(self) -> None:
        if self._owns_session:
            self.session.close()
