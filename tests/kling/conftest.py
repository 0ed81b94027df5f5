"""A local HTTP server standing in for Kling and the gateway, plus helpers shared by these tests."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from pytest_httpserver import HTTPServer

from kling import AppyPieClient, KlingClient
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

TEST_API_KEY = "test-static-api-key-0123456789-abcdefghijkl"
TEST_SUBSCRIPTION_KEY = "test-subscription-key-0123456789-abcdefgh"


@pytest.fixture(scope="module")
def _server() -> Iterator[HTTPServer]:
    # Threaded so a request held open (to force a client timeout) does not block the next one.
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    srv.start()
    yield srv
    srv.clear()
    srv.stop()


@pytest.fixture
def server(_server: HTTPServer) -> Iterator[HTTPServer]:
    _server.clear()
    yield _server
    _server.clear()


class Sleeps(list[float]):
    """Records the waits a client asks for instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def base_url(server: HTTPServer) -> str:
    return server.url_for("/").rstrip("/")


@pytest.fixture
def client(server: HTTPServer, sleeps: Sleeps) -> Iterator[KlingClient]:
    c = KlingClient(
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        base_url=base_url(server),
        timeout=(2, 2),
        max_retries=3,
        sleep=sleeps,
    )
    yield c
    c.close()


@pytest.fixture
def gateway(server: HTTPServer, sleeps: Sleeps) -> Iterator[AppyPieClient]:
    c = AppyPieClient(
        subscription_key=TEST_SUBSCRIPTION_KEY, base_url=base_url(server), timeout=(2, 2), sleep=sleeps
    )
    yield c
    c.close()


def task_json(
    task_id: str = "task-1", status: str = "submitted", external_task_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1722769557708,
        "updated_at": 1722769557708,
        **extra,
    }
    if external_task_id is not None:
        task["task_info"] = {"external_task_id": external_task_id}
    return task


def ok(data: Any) -> dict[str, Any]:
    return {"code": 0, "message": "SUCCEED", "request_id": "req-ok", "data": data}


def fail(code: int, message: str = "failed") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": "req-fail", "data": None}


def image_b64(width: int, height: int, fmt: str = "PNG", *, noise: bool = False) -> str:
    if noise:
        img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        img = Image.new("RGB", (width, height), (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"compress_level": 0} if fmt == "PNG" else {}))
    return base64.b64encode(buf.getvalue()).decode()
