"""Client for the Appy Pie gateway in front of Kling (kling-docs/003)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import requests

from kling.client import (
    UnsupportedOperation,
    _HttpClient,
    as_kind,
    envelope_error,
    extra_fields,
    one_id,
    plain_http_error,
)
from kling.errors import KlingError, ResourceNotFound, UnexpectedResponseError, ValidationError
from kling.http import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
    JsonResponse,
    Timeout,
    create_idempotently,
    log,
)
from kling.kinds import TaskKind
from kling.types import AccountCosts, Task
from kling.validation import ImageRequest, validate_image_params

APPYPIE = "https://gateway.appypie.com"
CREATE_PATH = "/kling-ai-image/v1/getImageTask"
STATUS_PATH = "/kling-ai-polling/v1/getImageStatus"
KEY_HEADER = "Ocp-Apim-Subscription-Key"


class AppyPieClient(_HttpClient):
    """Same interface as `KlingClient`, through the gateway.

    The gateway has no external task id, no lookup by it, no list and no account costs:
    `get_image(external_task_id=...)`, `list_images()` and `account_costs()` raise
    `UnsupportedOperation`. An `external_task_id` given to `create_image`
    is not sent, and, since the task cannot then be found after an ambiguous failure, such a
    create is never retried.
    """

    supports_external_task_id: ClassVar[bool] = False

    def __init__(
        self,
        *,
        subscription_key: str,
        base_url: str = APPYPIE,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        session: requests.Session | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not subscription_key:
            raise ValueError("subscription_key is required")
        self._key = subscription_key
        super().__init__(
            base_url,
            secrets=lambda: (self._key,),
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            session=session,
            pool_size=pool_size,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        return f"AppyPieClient(base_url={self.base_url!r})"

    def create_image(
        self, request: ImageRequest, *, external_task_id: str | None = None, callback_url: str | None = None
    ) -> Task:
        """`POST getImageTask`, after checking the request against the gateway's narrower rules."""
        body = {**request.to_body(), **extra_fields(callback_url, external_task_id)}
        if body.pop("external_task_id", None) is not None:
            log.debug("the Appy Pie gateway has no external_task_id; not sending it")
        errors = validate_image_params(body, provider="appypie")
        if errors:
            raise ValidationError(errors)

        def create() -> Task:
            data = self._post(CREATE_PATH, body)
            # Twice wrapped: {"data": {code, message, request_id, data: {task}}}.
            inner = data.get("data") if "code" not in data else data
            if not isinstance(inner, Mapping):
                raise UnexpectedResponseError("gateway answer has no data envelope")
            return Task.from_kling(inner.get("data"))

        return create_idempotently(
            self._retry, create, external_task_id=None, lookup=None, what="POST getImageTask"
        )

    def get_image(self, task_id: str | None = None, *, external_task_id: str | None = None) -> Task:
        """`POST getImageStatus` by task id; "task not found" becomes `ResourceNotFound`."""
        if external_task_id is not None:
            raise UnsupportedOperation("the Appy Pie gateway cannot look a task up by external_task_id")
        ident = one_id(task_id, None)

        def get() -> Task:
            data = self._post(STATUS_PATH, {"task_id": ident})
            if "task_id" not in data and isinstance(data.get("data"), Mapping):
                data = data["data"]
                if "code" in data and "task_id" not in data:
                    data = data.get("data") if isinstance(data.get("data"), Mapping) else data
            if "task_id" not in data:
                message = str(data.get("task_status_msg") or "")
                if data.get("task_status") == "failed" and "not found" in message.lower():
                    raise ResourceNotFound(f"task {ident} not found", http_status=200)
                raise UnexpectedResponseError("gateway status answer has no task_id")
            return Task.from_kling(data)

        return self._retry.run(get, "POST getImageStatus")

    def list_images(self, page: int = 1, page_size: int = 30) -> list[Task]:
        raise UnsupportedOperation("the Appy Pie gateway has no list endpoint")

    # --- every task kind: the gateway has image generation only --------------------------------
    def create_task(
        self,
        kind: str | TaskKind,
        params: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        external_task_id: str | None = None,
    ) -> Task:
        self._image_only(kind)
        request = ImageRequest.from_params(params)
        return self.create_image(request, external_task_id=external_task_id, callback_url=callback_url)

    def get_task(
        self, kind: str | TaskKind, task_id: str | None = None, *, external_task_id: str | None = None
    ) -> Task:
        self._image_only(kind)
        return self.get_image(task_id, external_task_id=external_task_id)

    def list_tasks(self, kind: str | TaskKind, page: int = 1, page_size: int = 30) -> list[Task]:
        self._image_only(kind)
        return self.list_images(page, page_size)

    @staticmethod
    def _image_only(kind: str | TaskKind) -> TaskKind:
        k = as_kind(kind)
        if "appypie" not in k.providers:
            raise UnsupportedOperation(f"the Appy Pie gateway has no {k.name} endpoint")
        return k

    def account_costs(self) -> AccountCosts:
        raise UnsupportedOperation("the Appy Pie gateway has no account costs endpoint")

    def _post(self, path: str, body: dict[str, Any]) -> Mapping[str, Any]:
        answer = self._http.send("POST", path, headers={KEY_HEADER: self._key}, json_body=body)
        if not isinstance(answer.body, Mapping):
            raise UnexpectedResponseError("answer is not a JSON object", http_status=answer.status)
        error = self._error(answer, answer.body)
        if error is not None:
            raise error
        return answer.body

    def _error(self, answer: JsonResponse, body: Mapping[str, Any]) -> KlingError | None:
        # The gateway may pass Kling's own envelope through (once or twice wrapped).
        inner = body.get("data")
        envelope = (
            body if "code" in body else inner if isinstance(inner, Mapping) and "code" in inner else None
        )
        if envelope is not None:
            return envelope_error(answer, envelope, self._http.redact)
        if answer.status >= 400:
            return plain_http_error(answer, self._http.redact)
        return None
