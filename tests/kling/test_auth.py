"""JWT exactly as the docs build it, cached and re-signed before expiry; static key mode."""

from __future__ import annotations

import threading
from typing import Any

import jwt
import pytest
from pytest_httpserver import HTTPServer

from kling import JwtAuth, KlingClient, StaticKeyAuth, jwt_token
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.kling.conftest import TEST_API_KEY, base_url, ok, task_json

NOW = 1_781_080_000


def claims(token: str) -> dict[str, object]:
    return jwt.decode(
        token, TEST_SECRET_KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
    )


def test_jwt_header_and_claims_are_exact() -> None:
    token = jwt_token(TEST_ACCESS_KEY, TEST_SECRET_KEY, now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert claims(token) == {"iss": TEST_ACCESS_KEY, "exp": NOW + 1800, "nbf": NOW - 5}


def test_jwt_is_signed_with_the_secret_key() -> None:
    token = jwt_token(TEST_ACCESS_KEY, TEST_SECRET_KEY, now=NOW)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token,
            "another-secret-key-0123456789-abcdefghijk",
            algorithms=["HS256"],
            options={"verify_exp": False},
        )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_is_reused_then_re_signed_60s_before_expiry() -> None:
    clock = Clock(NOW)
    auth = JwtAuth(TEST_ACCESS_KEY, TEST_SECRET_KEY, clock=clock)
    first = auth.token()
    clock.now = NOW + 1800 - 61
    assert auth.token() == first
    clock.now = NOW + 1800 - 60
    second = auth.token()
    assert second != first
    assert claims(second)["exp"] == NOW + 1800 - 60 + 1800


def test_invalidate_forces_a_new_signature() -> None:
    clock = Clock(NOW)
    auth = JwtAuth(TEST_ACCESS_KEY, TEST_SECRET_KEY, clock=clock)
    first = auth.token()
    clock.now += 10
    assert auth.invalidate() is True
    assert claims(auth.token())["exp"] == claims(first)["exp"] + 10  # type: ignore[operator]


def test_token_cache_is_thread_safe() -> None:
    calls = []

    def clock() -> float:
        calls.append(1)
        return NOW

    auth = JwtAuth(TEST_ACCESS_KEY, TEST_SECRET_KEY, clock=clock)
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        tokens.extend(auth.token() for _ in range(50))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 400
    assert len(set(tokens)) == 1


def test_static_key_cannot_be_refreshed() -> None:
    auth = StaticKeyAuth(TEST_API_KEY)
    assert auth.token() == TEST_API_KEY
    assert auth.invalidate() is False
    assert TEST_API_KEY not in repr(auth)


def test_client_sends_the_cached_jwt_as_bearer(server: HTTPServer) -> None:
    server.expect_request("/v1/images/generations/task-1", method="GET").respond_with_json(ok(task_json()))
    clock = Clock(NOW)
    with KlingClient(
        access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, base_url=base_url(server), clock=clock
    ) as c:
        c.get_image("task-1")
        clock.now += 100
        c.get_image("task-1")
    headers = [req.headers["Authorization"] for req, _ in server.log]
    assert len(headers) == 2
    assert headers[0] == headers[1]
    scheme, token = headers[0].split(" ")
    assert scheme == "Bearer"
    assert claims(token) == {"iss": TEST_ACCESS_KEY, "exp": NOW + 1800, "nbf": NOW - 5}


def test_client_sends_static_api_key(server: HTTPServer) -> None:
    server.expect_request("/v1/images/generations/task-1").respond_with_json(ok(task_json()))
    with KlingClient(api_key=TEST_API_KEY, base_url=base_url(server)) as c:
        c.get_image("task-1")
    ((req, _),) = server.log
    assert req.headers["Authorization"] == f"Bearer {TEST_API_KEY}"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"access_key": "ak"}, {"api_key": "k", "access_key": "a", "secret_key": "s"}],
)
def test_client_needs_exactly_one_auth_mode(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="access_key and secret_key, or api_key"):
        KlingClient(**kwargs)
