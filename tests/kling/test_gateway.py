"""The Appy Pie gateway client over the wire: unwrapping, plain HTTP errors, refused operations."""

from __future__ import annotations

import logging

import pytest
from pytest_httpserver import HTTPServer

from kling import (
    AppyPieClient,
    AuthenticationError,
    ImageProvider,
    ImageRequest,
    InvalidRequestError,
    KlingError,
    PermissionDenied,
    RateLimited,
    ResourceNotFound,
    ServerError,
    TaskStatus,
    UnsupportedOperation,
    ValidationError,
)
from tests.kling.conftest import TEST_SUBSCRIPTION_KEY, Sleeps, fail
from tests.samples import load

CREATE = "/kling-ai-image/v1/getImageTask"
STATUS = "/kling-ai-polling/v1/getImageStatus"
REQ = ImageRequest(prompt="Sparrow bird flying", negative_prompt="dark background")


def test_default_base_and_interface() -> None:
    c = AppyPieClient(subscription_key=TEST_SUBSCRIPTION_KEY)
    assert c.base_url == "https://gateway.appypie.com"
    assert isinstance(c, ImageProvider)
    assert c.supports_external_task_id is False
    assert TEST_SUBSCRIPTION_KEY not in repr(c)
    c.close()


def test_create_unwraps_twice_and_sends_key(server: HTTPServer, gateway: AppyPieClient) -> None:
    server.expect_request(
        CREATE, method="POST", headers={"Ocp-Apim-Subscription-Key": TEST_SUBSCRIPTION_KEY}
    ).respond_with_json(load("gateway/create-200"))
    task = gateway.create_image(REQ, external_task_id="job-1", callback_url="https://hooks.example.com/cb")
    assert (task.task_id, task.status) == ("ChE1cmdAL6YAAAAAAQXcUg", TaskStatus.SUBMITTED)
    ((req, _),) = server.log
    # The gateway has no external_task_id: it is not sent.
    assert req.json == {
        "prompt": "Sparrow bird flying",
        "negative_prompt": "dark background",
        "callback_url": "https://hooks.example.com/cb",
    }
    assert "Authorization" not in req.headers


def test_create_checks_gateway_rules_before_any_request(server: HTTPServer, gateway: AppyPieClient) -> None:
    req = ImageRequest(prompt="a" * 501, model_name="kling-v3", aspect_ratio="21:9")
    with pytest.raises(ValidationError) as info:
        gateway.create_image(req)
    assert {(e.field, e.rule) for e in info.value.errors} == {
        ("prompt", "max_length"),
        ("model_name", "unknown_field"),
        ("aspect_ratio", "enum"),
    }
    assert server.log == []


def test_create_inner_error_code(server: HTTPServer, gateway: AppyPieClient, sleeps: Sleeps) -> None:
    server.expect_request(CREATE).respond_with_json({"data": fail(1301, "content policy")})
    with pytest.raises(KlingError) as info:
        gateway.create_image(REQ)
    assert info.value.code == 1301
    assert len(server.log) == 1


def test_status_answers_task_unwrapped(server: HTTPServer, gateway: AppyPieClient) -> None:
    task_id = "CjNSIWdD6DYAAAAAAI1tSg"
    server.expect_request(STATUS, method="POST", json={"task_id": task_id}).respond_with_json(
        load("gateway/status-succeed-200")
    )
    task = gateway.get_image(task_id)
    assert (task.task_id, task.status) == (task_id, TaskStatus.SUCCEEDED)
    (image,) = task.images
    assert image.url.endswith(f"/{task_id}-0_raw_image_0.png")


def test_status_unknown_task_is_not_found(server: HTTPServer, gateway: AppyPieClient) -> None:
    server.expect_request(STATUS).respond_with_json(load("gateway/status-not-found-200"))
    with pytest.raises(ResourceNotFound):
        gateway.get_image("nope")
    assert len(server.log) == 1


@pytest.mark.parametrize(
    ("status", "cls", "requests"),
    [
        (400, InvalidRequestError, 1),
        (401, AuthenticationError, 1),
        (403, PermissionDenied, 1),
        (404, ResourceNotFound, 1),
        (429, RateLimited, 4),
        (500, ServerError, 4),
    ],
)
def test_plain_http_errors(
    server: HTTPServer,
    gateway: AppyPieClient,
    sleeps: Sleeps,
    status: int,
    cls: type[KlingError],
    requests: int,
) -> None:
    body = load(f"gateway/error-{status}")
    server.expect_request(STATUS).respond_with_json(body, status=status)
    with pytest.raises(cls) as info:
        gateway.get_image("gw-1")
    assert info.value.http_status == status
    assert body["error"] in str(info.value)
    assert len(server.log) == requests
    assert len(sleeps) == requests - 1


def test_create_is_not_retried_after_server_error(server: HTTPServer, gateway: AppyPieClient) -> None:
    server.expect_request(CREATE).respond_with_json(load("gateway/error-500"), status=500)
    with pytest.raises(ServerError):
        gateway.create_image(REQ, external_task_id="job-1")
    assert len(server.log) == 1


def test_create_is_retried_on_429_honouring_retry_after(
    server: HTTPServer, gateway: AppyPieClient, sleeps: Sleeps
) -> None:
    server.expect_ordered_request(CREATE).respond_with_json(
        load("gateway/error-429"), status=429, headers={"Retry-After": "4"}
    )
    server.expect_ordered_request(CREATE).respond_with_json(load("gateway/create-200"))
    assert gateway.create_image(REQ).task_id == "ChE1cmdAL6YAAAAAAQXcUg"
    assert sleeps == [4.0]


def test_refuses_what_the_gateway_lacks(server: HTTPServer, gateway: AppyPieClient) -> None:
    with pytest.raises(UnsupportedOperation, match="external_task_id"):
        gateway.get_image(external_task_id="job-1")
    with pytest.raises(UnsupportedOperation, match="list"):
        gateway.list_images()
    assert server.log == []


def test_subscription_key_never_in_errors_or_logs(
    server: HTTPServer, gateway: AppyPieClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.expect_request(STATUS).respond_with_json({"error": f"bad key {TEST_SUBSCRIPTION_KEY}"}, status=500)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ServerError) as info:
        gateway.get_image("gw-1")
    assert "bad key ***" in str(info.value)
    assert "retry" in caplog.text
    assert TEST_SUBSCRIPTION_KEY not in str(info.value) + caplog.text
