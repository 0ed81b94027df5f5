"""Appy Pie gateway mode: subscription key, double wrapping, plain HTTP errors."""

from __future__ import annotations

import pytest
import requests

from kling import (
    AppyPieClient,
    AuthenticationError,
    ImageRequest,
    RateLimited,
    ResourceNotFound,
    TaskStatus,
)
from tests.simulator.helpers import wait_until

KEY = "test-subscription-key-0123456789"
CREATE = "/kling-ai-image/v1/getImageTask"
STATUS = "/kling-ai-polling/v1/getImageStatus"


@pytest.fixture
def gateway(simulator_factory):
    return simulator_factory(subscription_key=KEY)


def gw_post(sim, path, body, key=KEY):
    headers = {"Ocp-Apim-Subscription-Key": key} if key else {}
    return requests.post(sim.base_url + path, json=body, headers=headers, timeout=5)


def test_wire_shapes(gateway):
    resp = gw_post(gateway, CREATE, {"prompt": "Sparrow bird flying"})
    assert resp.status_code == 200
    outer = resp.json()
    assert set(outer) == {"data"}
    assert outer["data"]["code"] == 0 and outer["data"]["message"] == "SUCCEED"
    task_id = outer["data"]["data"]["task_id"]
    assert outer["data"]["data"]["task_status"] == "submitted"
    status = gw_post(gateway, STATUS, {"task_id": task_id}).json()
    assert status["task_id"] == task_id and "code" not in status
    missing = gw_post(gateway, STATUS, {"task_id": "nope"})
    assert missing.json() == {"task_status": "failed", "task_status_msg": "task not found"}


def test_plain_http_errors(gateway):
    no_key = gw_post(gateway, CREATE, {"prompt": "x"}, key=None)
    assert no_key.status_code == 401 and set(no_key.json()) == {"error"}
    assert gw_post(gateway, CREATE, {"prompt": "x"}, key="wrong").status_code == 401
    bad = gw_post(gateway, CREATE, {"prompt": "x", "aspect_ratio": "21:9"})
    assert bad.status_code == 400 and "aspect_ratio" in bad.json()["error"]
    long_prompt = gw_post(gateway, CREATE, {"prompt": "x" * 501})
    assert long_prompt.status_code == 400 and "prompt" in long_prompt.json()["error"]
    assert gw_post(gateway, "/kling-ai-image/v1/other", {}).status_code == 404
    gateway.configure(fault_5000_rate=1.0)
    err = gw_post(gateway, CREATE, {"prompt": "x"})
    assert err.status_code == 500 and set(err.json()) == {"error"}
    assert gateway.create_count == 0


def test_client_end_to_end(gateway):
    with AppyPieClient(subscription_key=KEY, base_url=gateway.base_url) as c:
        created = c.create_image(ImageRequest(prompt="a sparrow", n=2))
        done = wait_until(lambda: (t := c.get_image(created.task_id)).status.is_final and t, what="final")
        assert done.status is TaskStatus.SUCCEEDED
        assert len(done.images) == 2
        image = requests.get(done.images[0].url, timeout=5)
        assert image.status_code == 200 and image.content == gateway.image_bytes(created.task_id, 0)
        with pytest.raises(ResourceNotFound):
            c.get_image("no-such-task")
    with (
        AppyPieClient(subscription_key="wrong", base_url=gateway.base_url) as bad,
        pytest.raises(AuthenticationError),
    ):
        bad.get_image(created.task_id)


def test_concurrency_is_429(simulator_factory):
    sim = simulator_factory(subscription_key=KEY, concurrency=1, submitted_seconds=30)
    assert gw_post(sim, CREATE, {"prompt": "x"}).status_code == 200
    over = gw_post(sim, CREATE, {"prompt": "x"})
    assert over.status_code == 429 and "error" in over.json()
    # A plain 429 cannot say which limit was hit: the client sees a retryable rate limit.
    with (
        AppyPieClient(subscription_key=KEY, base_url=sim.base_url, max_retries=0) as c,
        pytest.raises(RateLimited, match="parallel task over resource pack limit"),
    ):
        c.create_image(ImageRequest(prompt="x"))
    assert sim.count_by_code[1303] == 2
