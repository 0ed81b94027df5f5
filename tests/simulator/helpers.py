"""Small helpers shared by the simulator tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from kling import KlingClient
from kling.auth import jwt_token
from kling.simulator import Simulator
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

TIMEOUT = 5


def wait_until(check: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_token(TEST_ACCESS_KEY, TEST_SECRET_KEY)}"}


def post(sim: Simulator, path: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        sim.base_url + path,
        json=body,
        headers=auth_headers() if headers is None else headers,
        timeout=TIMEOUT,
    )


def get(sim: Simulator, path: str, headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
    return requests.get(
        sim.base_url + path,
        params=params,
        headers=auth_headers() if headers is None else headers,
        timeout=TIMEOUT,
    )


def client(sim: Simulator, **kwargs: Any) -> KlingClient:
    return KlingClient(
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        base_url=sim.base_url,
        backoff_base=0.01,
        backoff_max=0.05,
        **kwargs,
    )


def create(sim: Simulator, **body: Any) -> dict[str, Any]:
    """Create an image task over HTTP and return its task object."""
    resp = post(sim, "/v1/images/generations", {"prompt": "a red fox", **body})
    assert resp.status_code == 200, resp.text
    data: dict[str, Any] = resp.json()["data"]
    return data


def status_of(sim: Simulator, task_id: str) -> str:
    return str(get(sim, f"/v1/images/generations/{task_id}").json()["data"]["task_status"])
