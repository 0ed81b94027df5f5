"""The official-API client over the wire: errors, retries, re-signing, idempotent creates."""

from __future__ import annotations

import json
import logging
import threading
import time

import jwt
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from kling import (
    BEIJING,
    CODE_TABLE,
    SINGAPORE,
    AuthorizationExpired,
    ConcurrencyLimitExceeded,
    ImageProvider,
    ImageRequest,
    KlingClient,
    KlingError,
    OmniImageRequest,
    ResourceNotFound,
    ResourcePackDepleted,
    ServerError,
    TaskStatus,
    TransportError,
    UnexpectedResponseError,
    ValidationError,
)
from kling.http import DEFAULT_MAX_RETRY_AFTER
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.kling.conftest import TEST_API_KEY, Sleeps, base_url, fail, ok, task_json
from tests.samples import load

PATH = "/v1/images/generations"
REQ = ImageRequest(prompt="a red fox", n=2, aspect_ratio="1:1")
# The task and job of the recorded answers (tests/samples/kling).
TASK_ID, JOB_ID = "CjMrVGdYqz4AAAAAAKCdvA", "5f6a0c0e-8a1b-4c8e-9d2f-0b1e2c3d4a5b"


def requests_to(server: HTTPServer, method: str, path: str) -> list[Request]:
    return [req for req, _ in server.log if req.method == method and req.path == path]


def test_endpoints_and_interface() -> None:
    assert SINGAPORE == "https://api-singapore.klingai.com"
    assert BEIJING == "https://api-beijing.klingai.com"
    c = KlingClient(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY)
    assert c.base_url == SINGAPORE
    assert isinstance(c, ImageProvider)
    c.close()


def test_create_sends_body_and_returns_normalized_task(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(load("kling/create-200"))
    task = client.create_image(REQ, external_task_id=JOB_ID, callback_url="https://hooks.example.com/cb/1")
    assert task.task_id == TASK_ID
    assert task.status is TaskStatus.SUBMITTED
    assert task.created_at is not None and round(task.created_at.timestamp() * 1000) == 1722769557708
    (req,) = requests_to(server, "POST", PATH)
    assert req.json == {
        "prompt": "a red fox",
        "n": 2,
        "aspect_ratio": "1:1",
        "external_task_id": JOB_ID,
        "callback_url": "https://hooks.example.com/cb/1",
    }
    assert req.headers["Content-Type"] == "application/json"


def test_get_normalizes_succeed_and_images(server: HTTPServer, client: KlingClient) -> None:
    answer = load("kling/query-succeed-200")
    server.expect_request(f"{PATH}/{TASK_ID}", method="GET").respond_with_json(answer)
    task = client.get_image(TASK_ID)
    assert task.status is TaskStatus.SUCCEEDED
    recorded = answer["data"]["task_result"]["images"]
    assert [(i.index, i.url, i.watermark_url) for i in task.images] == [
        (r["index"], r["url"], r["watermark_url"]) for r in recorded
    ]


def test_failed_task_keeps_its_reason(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(f"{PATH}/{TASK_ID}", method="GET").respond_with_json(load("kling/query-failed-200"))
    task = client.get_image(TASK_ID)
    assert (task.status, task.images) == (TaskStatus.FAILED, ())
    assert task.status_message == "Failure to pass the risk control system"


def test_lookup_by_external_task_id(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(f"{PATH}/{JOB_ID}", method="GET").respond_with_json(
        load("kling/query-processing-200")
    )
    task = client.get_image(external_task_id=JOB_ID)
    assert (task.task_id, task.external_task_id, task.status) == (TASK_ID, JOB_ID, TaskStatus.PROCESSING)


def test_get_needs_exactly_one_id(server: HTTPServer, client: KlingClient) -> None:
    for kwargs in ({}, {"task_id": "a", "external_task_id": "b"}, {"task_id": ""}):
        with pytest.raises(ValidationError):
            client.get_image(**kwargs)
    assert server.log == []


def test_list_sends_paging_params(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(
        PATH, method="GET", query_string={"pageNum": "3", "pageSize": "50"}
    ).respond_with_json(load("kling/list-200"))
    tasks = client.list_images(page=3, page_size=50)
    assert [(t.task_id, t.status) for t in tasks] == [
        ("CjMrVGdYqz4AAAAAAKCeQw", TaskStatus.PROCESSING),
        (TASK_ID, TaskStatus.SUCCEEDED),
    ]


@pytest.mark.parametrize(("page", "size"), [(0, 30), (1001, 30), (1, 0), (1, 501)])
def test_list_refuses_bad_paging_locally(
    server: HTTPServer, client: KlingClient, page: int, size: int
) -> None:
    with pytest.raises(ValidationError):
        client.list_images(page=page, page_size=size)
    assert server.log == []


def test_omni_create_and_get(server: HTTPServer, client: KlingClient) -> None:
    series = {"series_images": [{"index": 0, "url": "https://cdn.example.com/s0.png"}]}
    server.expect_request("/v1/images/omni-image", method="POST").respond_with_json(ok(task_json("o-1")))
    server.expect_request("/v1/images/omni-image/o-1", method="GET").respond_with_json(
        ok(task_json("o-1", "succeed", task_result=series))
    )
    req = OmniImageRequest(prompt="fox", image_list=["https://cdn.example.com/r.png"], resolution="2k")
    assert client.create_omni_image(req, external_task_id="job-o").task_id == "o-1"
    (sent,) = requests_to(server, "POST", "/v1/images/omni-image")
    assert sent.json == {
        "prompt": "fox",
        "image_list": [{"image": "https://cdn.example.com/r.png"}],
        "resolution": "2k",
        "external_task_id": "job-o",
    }
    assert client.get_omni_image("o-1").series_images[0].url == "https://cdn.example.com/s0.png"


# --- errors: every code of the table --------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(CODE_TABLE))
def test_every_code_maps_to_its_class_and_retry_decision(
    server: HTTPServer, client: KlingClient, sleeps: Sleeps, code: int
) -> None:
    cls = CODE_TABLE[code]
    assert cls.default_http_status is not None
    server.expect_request(f"{PATH}/t-1").respond_with_json(fail(code, "nope"), status=cls.default_http_status)
    with pytest.raises(KlingError) as info:
        client.get_image("t-1")
    err = info.value
    assert type(err) is cls
    assert (err.code, err.http_status, err.request_id) == (code, cls.default_http_status, "req-fail")
    assert err.retryable is (code in (1302, 1303, 5000, 5001, 5002))
    if err.retryable:
        expected_requests = 1 + 3
    elif code == 1004:
        expected_requests = 2  # re-signed once
    else:
        expected_requests = 1
    assert len(server.log) == expected_requests
    assert len(sleeps) == expected_requests - 1 if err.retryable else sleeps == []


def test_backoff_is_exponential_with_full_jitter(
    server: HTTPServer, client: KlingClient, sleeps: Sleeps
) -> None:
    server.expect_request(f"{PATH}/t-1").respond_with_json(fail(5001), status=503)
    with pytest.raises(ServerError):
        client.get_image("t-1")
    assert len(sleeps) == 3
    for attempt, seconds in enumerate(sleeps):
        assert 0 <= seconds <= 0.5 * 2**attempt


def test_retry_after_is_honoured(server: HTTPServer, client: KlingClient, sleeps: Sleeps) -> None:
    server.expect_ordered_request(PATH, method="POST").respond_with_json(
        load("kling/error-1303-429"), status=429, headers={"Retry-After": "7"}
    )
    server.expect_ordered_request(PATH, method="POST").respond_with_json(
        fail(1302), status=429, headers={"Retry-After": "2.5"}
    )
    server.expect_ordered_request(PATH, method="POST").respond_with_json(load("kling/create-200"))
    assert client.create_image(REQ).task_id == TASK_ID
    assert sleeps == [7.0, 2.5]


def test_a_retry_after_of_an_hour_is_capped(server: HTTPServer, client: KlingClient, sleeps: Sleeps) -> None:
    server.expect_ordered_request(PATH, method="POST").respond_with_json(
        fail(1302), status=429, headers={"Retry-After": "3600"}
    )
    server.expect_ordered_request(PATH, method="POST").respond_with_json(ok(task_json()))
    assert client.create_image(REQ).task_id == "task-1"
    assert sleeps == [DEFAULT_MAX_RETRY_AFTER]


def test_account_error_is_not_retried(server: HTTPServer, client: KlingClient, sleeps: Sleeps) -> None:
    # The account's resource pack is used up: the same request fails until someone buys more.
    server.expect_request(PATH, method="POST").respond_with_json(load("kling/error-1102-429"), status=429)
    with pytest.raises(ResourcePackDepleted) as info:
        client.create_image(REQ)
    assert (info.value.code, info.value.retryable) == (1102, False)
    assert "Resource pack depleted" in info.value.message
    assert len(server.log) == 1 and sleeps == []


def test_max_retries_zero_disables_retrying(server: HTTPServer, sleeps: Sleeps) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(fail(1303), status=429)
    c = KlingClient(api_key=TEST_API_KEY, base_url=base_url(server), max_retries=0, sleep=sleeps)
    with c, pytest.raises(ConcurrencyLimitExceeded) as info:
        c.create_image(REQ, external_task_id="job-1")
    assert info.value.retryable
    assert len(server.log) == 1
    assert sleeps == []


def test_expired_token_is_re_signed_once(server: HTTPServer, sleeps: Sleeps) -> None:
    ticks = iter(range(1_781_080_000, 1_781_090_000, 1000))
    server.expect_ordered_request(f"{PATH}/{TASK_ID}").respond_with_json(
        load("kling/error-1004-401"), status=401
    )
    server.expect_ordered_request(f"{PATH}/{TASK_ID}").respond_with_json(load("kling/query-submitted-200"))
    with KlingClient(
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        base_url=base_url(server),
        clock=lambda: next(ticks),
    ) as c:
        assert c.get_image(TASK_ID).status is TaskStatus.SUBMITTED
    tokens = [req.headers["Authorization"].removeprefix("Bearer ") for req, _ in server.log]
    assert len(tokens) == 2
    exps = [
        jwt.decode(
            t, TEST_SECRET_KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
        )["exp"]
        for t in tokens
    ]
    assert exps[1] > exps[0]
    assert sleeps == []


def test_static_key_is_not_retried_on_1004(server: HTTPServer) -> None:
    server.expect_request(f"{PATH}/t-1").respond_with_json(fail(1004), status=401)
    with (
        KlingClient(api_key=TEST_API_KEY, base_url=base_url(server)) as c,
        pytest.raises(AuthorizationExpired),
    ):
        c.get_image("t-1")
    assert len(server.log) == 1


# --- unexpected answers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "content_type"),
    [
        ("<html>oops</html>", 200, "text/html"),
        ("", 200, "application/json"),
        (json.dumps([1, 2]), 200, "application/json"),
        (json.dumps({"message": "no code"}), 200, "application/json"),
        (json.dumps(ok("not a task")), 200, "application/json"),
        (json.dumps(ok({"task_id": "t", "task_status": "exploded"})), 200, "application/json"),
        (json.dumps(ok({"task_status": "submitted"})), 200, "application/json"),
        (
            json.dumps(
                ok({"task_id": "t", "task_status": "succeed", "task_result": {"images": [{"index": 0}]}})
            ),
            200,
            "application/json",
        ),
    ],
)
def test_unexpected_answers_raise_unexpected_response_error(
    server: HTTPServer, client: KlingClient, sleeps: Sleeps, body: str, status: int, content_type: str
) -> None:
    server.expect_request(f"{PATH}/t-1").respond_with_data(body, status=status, content_type=content_type)
    with pytest.raises(UnexpectedResponseError) as info:
        client.get_image("t-1")
    assert not info.value.retryable
    assert len(server.log) == 1


def test_html_gateway_error_is_retried(server: HTTPServer, client: KlingClient, sleeps: Sleeps) -> None:
    server.expect_ordered_request(f"{PATH}/t-1").respond_with_data("<h1>502 Bad Gateway</h1>", status=502)
    server.expect_ordered_request(f"{PATH}/t-1").respond_with_json(ok(task_json("t-1")))
    assert client.get_image("t-1").task_id == "t-1"
    assert len(sleeps) == 1


def test_list_with_non_list_data(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="GET").respond_with_json(ok({"task_id": "x"}))
    with pytest.raises(UnexpectedResponseError):
        client.list_images()


def test_connection_refused_is_a_transport_error(sleeps: Sleeps) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        KlingClient(
            api_key=TEST_API_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=2, sleep=sleeps
        ) as c,
        pytest.raises(TransportError) as info,
    ):
        c.get_image("t-1")
    assert info.value.retryable
    assert len(sleeps) == 2


# --- idempotent create ----------------------------------------------------------------------------
class HeldCreate:
    """Holds the create request open until released, so the client's read timeout fires."""

    def finish(self, server: HTTPServer) -> None:
        """Release the held request and wait (bounded) until the server has logged it."""
        self.release.set()
        deadline = time.monotonic() + 10
        while len(requests_to(server, "POST", PATH)) < self.count and time.monotonic() < deadline:
            self.release.wait(0.01)

    def __init__(self) -> None:
        self.release = threading.Event()
        self.count = 0

    def __call__(self, request: Request) -> Response:
        self.count += 1
        self.release.wait(10)
        return Response(json.dumps(ok(task_json("late"))), content_type="application/json")


def test_timeout_then_lookup_finds_task_creates_once(server: HTTPServer, sleeps: Sleeps) -> None:
    held = HeldCreate()
    server.expect_request(PATH, method="POST").respond_with_handler(held)
    server.expect_request(f"{PATH}/job-1", method="GET").respond_with_json(
        ok(task_json("t-1", "processing", external_task_id="job-1"))
    )
    c = KlingClient(api_key=TEST_API_KEY, base_url=base_url(server), timeout=(2, 0.3), sleep=sleeps)
    try:
        task = c.create_image(REQ, external_task_id="job-1")
    finally:
        held.finish(server)
        c.close()
    assert (task.task_id, task.external_task_id) == ("t-1", "job-1")
    assert held.count == 1
    assert len(requests_to(server, "GET", f"{PATH}/job-1")) == 1


def test_server_error_then_not_found_creates_again(server: HTTPServer, client: KlingClient) -> None:
    server.expect_ordered_request(PATH, method="POST").respond_with_json(fail(5000), status=500)
    server.expect_ordered_request(f"{PATH}/job-2", method="GET").respond_with_json(
        load("kling/error-1203-404"), status=404
    )
    server.expect_ordered_request(PATH, method="POST").respond_with_json(
        ok(task_json("t-2", external_task_id="job-2"))
    )
    assert client.create_image(REQ, external_task_id="job-2").task_id == "t-2"
    assert len(requests_to(server, "POST", PATH)) == 2


def test_lookup_failure_is_raised_without_creating_again(server: HTTPServer, sleeps: Sleeps) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(fail(5000), status=500)
    server.expect_request(f"{PATH}/job-3", method="GET").respond_with_json(fail(1103), status=403)
    with (
        KlingClient(api_key=TEST_API_KEY, base_url=base_url(server), sleep=sleeps) as c,
        pytest.raises(KlingError) as info,
    ):
        c.create_image(REQ, external_task_id="job-3")
    assert info.value.code == 1103
    assert isinstance(info.value.__cause__, ServerError)
    assert len(requests_to(server, "POST", PATH)) == 1


def test_ambiguous_failure_without_external_id_is_not_retried(
    server: HTTPServer, client: KlingClient
) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(fail(5000), status=500)
    with pytest.raises(ServerError):
        client.create_image(REQ)
    assert len(server.log) == 1


def test_timeout_without_external_id_is_not_retried(server: HTTPServer, sleeps: Sleeps) -> None:
    held = HeldCreate()
    server.expect_request(PATH, method="POST").respond_with_handler(held)
    c = KlingClient(api_key=TEST_API_KEY, base_url=base_url(server), timeout=(2, 0.3), sleep=sleeps)
    try:
        with pytest.raises(TransportError):
            c.create_image(REQ)
    finally:
        held.finish(server)
        c.close()
    assert held.count == 1
    assert sleeps == []


def test_max_retries_zero_raises_ambiguous_failure_without_lookup(server: HTTPServer) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(fail(5002), status=504)
    with (
        KlingClient(api_key=TEST_API_KEY, base_url=base_url(server), max_retries=0) as c,
        pytest.raises(ServerError),
    ):
        c.create_image(REQ, external_task_id="job-4")
    assert len(server.log) == 1


def test_duplicate_external_id_returns_existing_task(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(
        fail(1201, "external_task_id already exists"), status=400
    )
    server.expect_request(f"{PATH}/job-5", method="GET").respond_with_json(
        ok(task_json("t-5", "succeed", external_task_id="job-5"))
    )
    task = client.create_image(REQ, external_task_id="job-5")
    assert (task.task_id, task.status) == ("t-5", TaskStatus.SUCCEEDED)
    assert len(requests_to(server, "POST", PATH)) == 1


def test_other_1201_is_raised(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="POST").respond_with_json(
        fail(1201, "resolution not supported"), status=400
    )
    with pytest.raises(KlingError) as info:
        client.create_image(REQ, external_task_id="job-6")
    assert info.value.code == 1201
    assert len(server.log) == 1


def test_lookup_returning_another_task_is_refused(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(f"{PATH}/job-7").respond_with_json(ok(task_json("t", external_task_id="job-other")))
    with pytest.raises(UnexpectedResponseError):
        client.get_image(external_task_id="job-7")


def test_not_found_is_resource_not_found(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(f"{PATH}/nope").respond_with_json(load("kling/error-1203-404"), status=404)
    with pytest.raises(ResourceNotFound) as info:
        client.get_image("nope")
    assert info.value.request_id == load("kling/error-1203-404")["request_id"]


# --- secrets ----------------------------------------------------------------------------------------
def echo_auth(request: Request) -> Response:
    """A misbehaving server that echoes the credentials it got into its error message."""
    text = f"bad credentials {request.headers.get('Authorization')}"
    return Response(json.dumps(fail(5000, text)), status=500, content_type="application/json")


def test_secrets_never_reach_errors_or_logs(
    server: HTTPServer, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    server.expect_request(f"{PATH}/t-1").respond_with_handler(echo_auth)
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for kwargs in ({"access_key": TEST_ACCESS_KEY, "secret_key": TEST_SECRET_KEY}, {"api_key": TEST_API_KEY}):
        with KlingClient(base_url=base_url(server), sleep=sleeps, **kwargs) as c:  # type: ignore[arg-type]
            with pytest.raises(ServerError) as info:
                c.get_image("t-1")
            seen += [str(info.value), repr(info.value), info.value.message, repr(c)]
    sent = {req.headers["Authorization"].removeprefix("Bearer ") for req, _ in server.log}
    assert len(sent) == 2
    blob = "\n".join([*seen, caplog.text])
    assert "retry" in caplog.text  # the retries were logged...
    assert "bad credentials Bearer ***" in blob  # ...and the echoed message kept, minus the secret
    for secret in (*sent, TEST_SECRET_KEY, TEST_API_KEY):
        assert secret not in blob


def test_client_repr_hides_keys() -> None:
    c = KlingClient(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY)
    assert TEST_SECRET_KEY not in repr(c)
    c.close()


def test_request_fields_are_validated_before_sending(server: HTTPServer, client: KlingClient) -> None:
    with pytest.raises(ValidationError, match="callback_url"):
        client.create_image(REQ, callback_url="ftp://x")
    assert server.log == []
