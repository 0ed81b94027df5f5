"""A small typed client for the job API, for programs that queue work through the service:

    from klingctl.client import Client
    api = Client("https://kling.example.com", token=os.environ["API_TOKEN"])  # or a tenant's key
    job = api.create({"prompt": "a lighthouse", "n": 2}, webhook_url=..., idempotency_key="order-42")
    done = api.wait(job["id"], timeout=600)          # the final document (archived, failed, ...)
    for job in api.jobs(status="failed"): ...        # every page, newest first
    api.jobs(tenant="acme"); api.create(..., tenant="acme")   # the operator, for one tenant
    api.cancel(job_id); api.retry(job_id)
    event = Client.verify_event(NOTIFY_SECRET, request.headers, request.get_data())

`token`: the operator's API_TOKEN (every tenant's jobs) or a tenant's key (`kt_...` from
`klingctl tenants create`: its own jobs only, another tenant's job is a 404 ApiError).

Every call has a timeout; an answer other than 2xx raises `ApiError` with the service's message
and the fields it names. Documents are the API's JSON objects (docs/api.md), as dicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import requests

from kling.callbacks import verify_callback_signature

JSON = dict[str, Any]
FINAL = frozenset({"archived", "failed", "cancelled", "expired"})
DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds, for every request


class ApiError(Exception):
    """The service refused or failed a request: `status`, its `message` and the `fields` it named."""

    def __init__(self, status: int, message: str, fields: list[JSON] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.fields = status, message, fields or []


class Client:
    """The job API at `base_url`, as `token`: the operator's API_TOKEN or a tenant's key."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = session or requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"

    # --- jobs -----------------------------------------------------------------------------------------
    def create(
        self,
        params: Mapping[str, Any],
        *,
        kind: str | None = None,
        provider: str | None = None,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        deadline_seconds: int | None = None,
        webhook_events: list[str] | None = None,
        priority: str | None = None,
        tenant: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Queue a job (202), or get the job an earlier request with this `idempotency_key` made
        (keys are per tenant). `tenant`: whose job; a tenant key may name only its own."""
        body: JSON = dict(params)
        for name, value in (
            ("kind", kind),
            ("provider", provider),
            ("webhook_url", webhook_url),
            ("metadata", metadata),
            ("deadline_seconds", deadline_seconds),
            ("webhook_events", webhook_events),
            ("priority", priority),
            ("tenant", tenant),
        ):
            if value is not None:
                body[name] = value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=body, headers=headers)

    def get(self, job_id: str) -> JSON:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self, *, status: str | None = None, tenant: str | None = None, page_size: int = 50
    ) -> Iterator[JSON]:
        """Every job the token sees, newest first, fetching pages of `page_size` as the iteration
        goes; `tenant`: only that tenant's."""
        query: dict[str, str | int] = {"limit": page_size}
        for name, value in (("status", status), ("tenant", tenant)):
            if value is not None:
                query[name] = value
        while True:
            page = self._call("GET", "/v1/jobs", params=query)
            yield from page["jobs"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def cancel(self, job_id: str) -> JSON:
        """`{"outcome": "cancelled" | "cancel_requested", "message": ..., "job": {...}}`; a job that
        already ended raises ApiError 409."""
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str, *, idempotency_key: str | None = None) -> JSON:
        """A new job with the request of a failed, expired or cancelled one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", f"/v1/jobs/{job_id}/retry", headers=headers)

    def deliveries(self, job_id: str) -> JSON:
        """The job's downstream deliveries, each with every attempt, and the endpoint's health."""
        return self._call("GET", f"/v1/jobs/{job_id}/deliveries")

    def replay(self, job_id: str, event: str) -> JSON:
        """Send a downstream event again on a fresh retry schedule."""
        return self._call("POST", f"/v1/jobs/{job_id}/deliveries/{event}/replay")

    def wait(self, job_id: str, *, timeout: float, interval: float = 2.0) -> JSON:
        """Poll until the job ends; its final document. TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.get(job_id)
            if doc["status"] in FINAL:
                return doc
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} is still {doc['status']} after {timeout:g} s")
            time.sleep(min(interval, left))

    # --- downstream events ------------------------------------------------------------------------------
    @staticmethod
    def verify_event(secret: str, headers: Mapping[str, str], body: bytes) -> JSON:
        """The event a `webhook_url` received, once its Standard Webhooks signature (NOTIFY_SECRET)
        checks out; raises `kling.callbacks.SignatureError` otherwise."""
        verify_callback_signature(secret, headers, body)
        event: JSON = json.loads(body)
        return event

    # --- wire -------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> JSON:
        response = self._http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not response.ok:
            message = payload.get("error") if isinstance(payload, dict) else None
            fields = payload.get("fields") if isinstance(payload, dict) else None
            raise ApiError(response.status_code, message or response.reason or "error", fields)
        if not isinstance(payload, dict):
            raise ApiError(response.status_code, "the answer is not a JSON object")
        return payload
