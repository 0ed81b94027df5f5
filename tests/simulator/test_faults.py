"""API fault knobs: 5000/5001/5002/1302 rates, create-only scope, accept-then-drop, delay, seed."""

from __future__ import annotations

import pytest
import requests

from kling import ImageRequest, RateLimited, ServerError, ServerTimeout, ServiceUnavailable
from kling.errors import AccountInArrears, IPWhitelistError, ResourcePackDepleted
from tests.simulator.helpers import auth_headers, client, create, get, post

PATH = "/v1/images/generations"


@pytest.mark.parametrize(
    ("code", "http", "error"),
    [
        (5000, 500, ServerError),
        (5001, 503, ServiceUnavailable),
        (5002, 504, ServerTimeout),
        (1302, 429, RateLimited),
    ],
)
def test_fault_rate_answers_code(simulator, code, http, error):
    simulator.configure(**{f"fault_{code}_rate": 1.0})
    resp = post(simulator, PATH, {"prompt": "x"})
    assert resp.status_code == http and resp.json()["code"] == code
    assert get(simulator, PATH).json()["code"] == code
    assert simulator.create_count == 0
    with client(simulator, max_retries=0) as c, pytest.raises(error) as info:
        c.list_images()
    assert info.value.code == code
    assert simulator.count_by_code[code] == 3


def test_faults_on_create_only(simulator):
    simulator.configure(fault_5000_rate=1.0, faults_on_create_only=True)
    assert post(simulator, PATH, {"prompt": "x"}).json()["code"] == 5000
    assert get(simulator, PATH).json()["code"] == 0


def test_accept_then_drop_creates_the_task_but_the_client_sees_a_reset(simulator):
    simulator.configure(accept_then_drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        requests.post(
            simulator.base_url + PATH,
            json={"prompt": "x", "external_task_id": "dropped"},
            headers=auth_headers(),
            timeout=5,
        )
    assert len(simulator.tasks_by_external_id("dropped")) == 1
    assert simulator.dropped_connections == 1
    assert get(simulator, f"{PATH}/dropped").json()["data"]["task_info"]["external_task_id"] == "dropped"


def test_client_recovers_from_drop_without_a_second_task(simulator):
    simulator.configure(accept_then_drop_rate=1.0)
    with client(simulator) as c:
        task = c.create_image(ImageRequest(prompt="x"), external_task_id="job-7")
    assert [t["task_id"] for t in simulator.tasks_by_external_id("job-7")] == [task.task_id]
    assert simulator.create_count == 1


def test_accept_then_error(simulator):
    simulator.configure(accept_then_error_rate=1.0)
    resp = post(simulator, PATH, {"prompt": "x", "external_task_id": "half"})
    assert resp.status_code == 500 and resp.json()["code"] == 5000
    assert len(simulator.tasks_by_external_id("half")) == 1


def test_response_delay(simulator):
    simulator.configure(response_delay_seconds=2.0)
    with pytest.raises(requests.Timeout):
        requests.get(simulator.base_url + PATH, headers=auth_headers(), timeout=0.2)
    simulator.configure(response_delay_seconds=0.0)
    assert get(simulator, PATH).json()["code"] == 0


def test_seed_makes_faults_reproducible(simulator_factory):
    def run(sim):
        sim.configure(fault_5000_rate=0.5, faults_on_create_only=True)
        return [post(sim, PATH, {"prompt": "x"}).json()["code"] for _ in range(12)]

    a = run(simulator_factory(seed=7, concurrency=100))
    b = run(simulator_factory(seed=7, concurrency=100))
    assert a == b
    assert set(a) == {0, 5000}


def test_rates_are_validated(simulator):
    with pytest.raises(ValueError, match="fault_5000_rate"):
        simulator.configure(fault_5000_rate=2)
    with pytest.raises(ValueError, match="unknown"):
        simulator.configure(no_such_knob=1)
    create(simulator)  # still serving with the old knobs


@pytest.mark.parametrize(
    ("code", "http", "error"),
    [(1102, 429, ResourcePackDepleted), (1101, 429, AccountInArrears), (1304, 429, IPWhitelistError)],
)
def test_account_code_refuses_every_create_until_cleared(simulator, code, http, error):
    simulator.configure(account_code=code)
    resp = post(simulator, PATH, {"prompt": "x", "external_task_id": "dry"})
    assert resp.status_code == http and resp.json()["code"] == code
    with client(simulator, max_retries=0) as c, pytest.raises(error):
        c.create_image(ImageRequest(prompt="x"))
    assert simulator.create_count == 0 and simulator.tasks_by_external_id("dry") == []
    assert get(simulator, PATH).json()["code"] == 0  # queries still answer
    simulator.configure(account_code=None)  # the pack is topped up
    assert create(simulator, external_task_id="dry")["task_id"]
    assert simulator.count_by_code[code] == 2


def test_account_code_must_be_an_account_code(simulator):
    with pytest.raises(ValueError, match="account_code"):
        simulator.configure(account_code=1201)
