"""The provider interface and the client for Kling's official API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable
from urllib.parse import quote

import requests

from kling.auth import JwtAuth, StaticKeyAuth, TokenProvider
from kling.errors import (
    AuthorizationExpired,
    FieldError,
    KlingError,
    UnexpectedResponseError,
    ValidationError,
    error_for,
)
from kling.http import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
    HttpTransport,
    JsonResponse,
    RetryPolicy,
    Timeout,
    create_idempotently,
)
from kling.kinds import TaskKind, kind_for
from kling.types import AccountCosts, Task
from kling.validation import ImageRequest, OmniImageRequest

SINGAPORE = "https://api-singapore.klingai.com"
BEIJING = "https://api-beijing.klingai.com"

IMAGES_PATH = "/v1/images/generations"
OMNI_PATH = "/v1/images/omni-image"
COSTS_PATH = "/account/costs"
# Packs bought before start_time are left out of the answer, so ask for a wide window.
COSTS_WINDOW_DAYS = 400


class UnsupportedOperation(KlingError):
    """The provider has no endpoint for this operation"""


@runtime_checkable
class ImageProvider(Protocol):
    """What the worker needs from a provider; `KlingClient` and `AppyPieClient` implement it."""

    # False when the provider cannot find a task by external id, so a create is not idempotent.
    supports_external_task_id: ClassVar[bool]

    def create_image(
        self, request: ImageRequest, *, external_task_id: str | None = None, callback_url: str | None = None
    ) -> Task: ...

    def get_image(self, task_id: str | None = None, *, external_task_id: str | None = None) -> Task: ...

    def list_images(self, page: int = 1, page_size: int = 30) -> list[Task]: ...

    def account_costs(self) -> AccountCosts: ...

    def close(self) -> None: ...


@runtime_checkable
class TaskProvider(ImageProvider, Protocol):
    """`ImageProvider` plus every task kind (`kling.kinds`); both clients implement it (the gateway
    for `image` only). Kept apart so existing `ImageProvider` implementations stay complete."""

    def create_task(
        self,
        kind: str | TaskKind,
        params: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        external_task_id: str | None = None,
    ) -> Task: ...

    def get_task(
        self, kind: str | TaskKind, task_id: str | None = None, *, external_task_id: str | None = None
    ) -> Task: ...

    def list_tasks(self, kind: str | TaskKind, page: int = 1, page_size: int = 30) -> list[Task]: ...


def envelope_error(
    answer: JsonResponse, body: Mapping[str, Any], redact: Callable[[str], str]
) -> KlingError | None:
    """The error in a `{code, message, request_id, data}` answer, or None when it succeeded."""
    code = body.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int):
        return UnexpectedResponseError("answer has no integer code", http_status=answer.status)
    if code == 0 and answer.status < 400:
        return None
    message = body.get("message") or body.get("error")
    request_id = body.get("request_id")
    return error_for(
        code or None,
        answer.status,
        redact(message) if isinstance(message, str) else "",
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after=answer.retry_after,
    )


def plain_http_error(answer: JsonResponse, redact: Callable[[str], str]) -> KlingError:
    """An error answer without a service code (proxies, the gateway): decided by HTTP status."""
    body = answer.body
    message = ""
    if isinstance(body, Mapping):
        for key in ("error", "message", "msg"):
            if isinstance(body.get(key), str):
                message = body[key]
                break
    return error_for(None, answer.status, redact(message), retry_after=answer.retry_after)


def extra_fields(callback_url: str | None, external_task_id: str | None) -> dict[str, str]:
    errors = []
    if callback_url is not None and (
        not isinstance(callback_url, str) or not callback_url.startswith(("http://", "https://"))
    ):
        errors.append(FieldError("callback_url", "url", "must be an http(s) URL"))
    if external_task_id is not None and (not isinstance(external_task_id, str) or not external_task_id):
        errors.append(FieldError("external_task_id", "type", "must be a non-empty string"))
    if errors:
        raise ValidationError(errors)
    out = {}
    if callback_url is not None:
        out["callback_url"] = callback_url
    if external_task_id is not None:
        out["external_task_id"] = external_task_id
    return out


def as_kind(kind: str | TaskKind) -> TaskKind:
    return kind if isinstance(kind, TaskKind) else kind_for(kind)


def task_body(
    kind: TaskKind,
    params: Mapping[str, Any],
    provider: Literal["kling", "appypie"],
    callback_url: str | None,
    external_task_id: str | None,
) -> dict[str, Any]:
    """The create body for `kind`, validated; raises `ValidationError` naming every bad field."""
    if not isinstance(params, Mapping):
        raise ValidationError([FieldError("params", "type", "must be an object")])
    body = {**params, **extra_fields(callback_url, external_task_id)}
    errors = kind.validate(body, provider)
    if errors:
        raise ValidationError(errors)
    return body


def page_params(page: int, page_size: int) -> dict[str, int]:
    errors = []
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= 1000:
        errors.append(FieldError("page", "range", "must be an integer between 1 and 1000"))
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 500:
        errors.append(FieldError("page_size", "range", "must be an integer between 1 and 500"))
    if errors:
        raise ValidationError(errors)
    return {"pageNum": page, "pageSize": page_size}


def one_id(task_id: str | None, external_task_id: str | None) -> str:
    given = [v for v in (task_id, external_task_id) if v is not None]
    if len(given) != 1 or not isinstance(given[0], str) or not given[0]:
        raise ValidationError(
            [FieldError("task_id", "one_of", "give exactly one of task_id or external_task_id (non-empty)")]
        )
    return given[0]


class _HttpClient:
    """What both clients share: one pooled transport with timeouts, the retry policy, lifecycle."""

    def __init__(
        self,
        base_url: str,
        *,
        secrets: Callable[[], Iterable[str]],
        timeout: Timeout,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
        session: requests.Session | None,
        pool_size: int,
        sleep: Callable[[float], None] | None,
    ) -> None:
        self._http = HttpTransport(
            base_url, timeout=timeout, session=session, pool_size=pool_size, secrets=secrets
        )
        self._retry = RetryPolicy(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            sleep=sleep,
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()


class KlingClient(_HttpClient):
    """Client for Kling's official API (JWT from access + secret key, or a static API key)."""

    supports_external_task_id: ClassVar[bool] = True

    def __init__(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        api_key: str | None = None,
        base_url: str = SINGAPORE,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        session: requests.Session | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        auth: TokenProvider | None = None,
    ) -> None:
        if auth is None:
            if api_key and not (access_key or secret_key):
                auth = StaticKeyAuth(api_key)
            elif access_key and secret_key and not api_key:
                auth = JwtAuth(access_key, secret_key, clock=clock)
            else:
                raise ValueError("give either access_key and secret_key, or api_key")
        self._auth = auth
        self._now = clock or time.time
        super().__init__(
            base_url,
            secrets=auth.secrets,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            session=session,
            pool_size=pool_size,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"KlingClient(base_url={self.base_url!r}, auth={self._auth!r})"

    # --- image generation -------------------------------------------------------------------
    def create_image(
        self, request: ImageRequest, *, external_task_id: str | None = None, callback_url: str | None = None
    ) -> Task:
        """`POST /v1/images/generations`; never creates two tasks for one `external_task_id`."""
        body = {**request.to_body(), **extra_fields(callback_url, external_task_id)}
        return self._create(IMAGES_PATH, body, external_task_id)

    def get_image(self, task_id: str | None = None, *, external_task_id: str | None = None) -> Task:
        """`GET /v1/images/generations/{id}`, by task id or by external task id."""
        return self._get(IMAGES_PATH, task_id, external_task_id)

    def list_images(self, page: int = 1, page_size: int = 30) -> list[Task]:
        """`GET /v1/images/generations?pageNum=&pageSize=` (page 1-1000, page_size 1-500)."""
        return self.list_tasks("image", page, page_size)

    # --- every task kind (kling.kinds) ---------------------------------------------------------
    def create_task(
        self,
        kind: str | TaskKind,
        params: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        external_task_id: str | None = None,
    ) -> Task:
        """`POST {kind.path}` with the kind's rules checked first; never two tasks for one
        `external_task_id` (an ambiguous failure is followed by a lookup, as for images)."""
        k = as_kind(kind)
        body = task_body(k, params, "kling", callback_url, external_task_id)
        return self._create(k.path, body, external_task_id)

    def get_task(
        self, kind: str | TaskKind, task_id: str | None = None, *, external_task_id: str | None = None
    ) -> Task:
        """`GET {kind.path}/{id}`, by task id or by external task id."""
        return self._get(as_kind(kind).path, task_id, external_task_id)

    def list_tasks(self, kind: str | TaskKind, page: int = 1, page_size: int = 30) -> list[Task]:
        """`GET {kind.path}?pageNum=&pageSize=` (page 1-1000, page_size 1-500), newest first."""
        path = as_kind(kind).path
        params = page_params(page, page_size)
        data = self._retry.run(lambda: self._call("GET", path, params=params), f"list {path}")
        if not isinstance(data, list):
            raise UnexpectedResponseError("list answer data is not a list")
        return [Task.from_kling(item) for item in data]

    # --- account -----------------------------------------------------------------------------
    def account_costs(self) -> AccountCosts:
        """`GET /account/costs` over the last 400 days: the resource packs (free to call, but at
        most 1 request/s per account; remaining quantities may lag by hours)."""
        end = int(self._now() * 1000)
        start = end - COSTS_WINDOW_DAYS * 86_400_000
        params = {"start_time": start, "end_time": end}
        data = self._retry.run(lambda: self._call("GET", COSTS_PATH, params=params), "account costs")
        return AccountCosts.from_kling(data)

    # --- omni image ---------------------------------------------------------------------------
    def create_omni_image(
        self,
        request: OmniImageRequest,
        *,
        external_task_id: str | None = None,
        callback_url: str | None = None,
    ) -> Task:
        """`POST /v1/images/omni-image`, with the same no-double-create rule as `create_image`."""
        body = {**request.to_body(), **extra_fields(callback_url, external_task_id)}
        return self._create(OMNI_PATH, body, external_task_id)

    def get_omni_image(self, task_id: str | None = None, *, external_task_id: str | None = None) -> Task:
        return self._get(OMNI_PATH, task_id, external_task_id)

    # --- plumbing -----------------------------------------------------------------------------
    def _create(self, path: str, body: dict[str, Any], external_task_id: str | None) -> Task:
        def create() -> Task:
            return Task.from_kling(self._call("POST", path, json_body=body))

        def lookup() -> Task:
            return self._get(path, None, external_task_id)

        return create_idempotently(
            self._retry, create, external_task_id=external_task_id, lookup=lookup, what=f"POST {path}"
        )

    def _get(self, path: str, task_id: str | None, external_task_id: str | None) -> Task:
        ident = one_id(task_id, external_task_id)
        url = f"{path}/{quote(ident, safe='')}"
        task = self._retry.run(lambda: Task.from_kling(self._call("GET", url)), f"GET {path}/{{id}}")
        if external_task_id is not None and task.external_task_id not in (None, external_task_id):
            raise UnexpectedResponseError("lookup by external_task_id answered a different task")
        return task

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request (plus one re-signed retry on 1004); the `data` of a successful answer."""
        resigned = False
        while True:
            headers = {"Authorization": f"Bearer {self._auth.token()}"}
            answer = self._http.send(method, path, headers=headers, json_body=json_body, params=params)
            if not isinstance(answer.body, Mapping):
                raise UnexpectedResponseError("answer is not a JSON object", http_status=answer.status)
            if "code" not in answer.body and answer.status >= 400:
                raise plain_http_error(answer, self._http.redact)
            error = envelope_error(answer, answer.body, self._http.redact)
            if error is None:
                return answer.body.get("data")
            if isinstance(error, AuthorizationExpired) and not resigned and self._auth.invalidate():
                resigned = True
                continue
            raise error
