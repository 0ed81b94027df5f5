"""Concurrency in slots: n per image task, held until the task ends; 429/1303 over the limit."""

from __future__ import annotations

import pytest

from kling import ConcurrencyLimitExceeded, ImageRequest
from tests.simulator.helpers import client, create, post, wait_until

PATH = "/v1/images/generations"


def test_n_counts_in_slots_and_over_limit_is_1303(simulator_factory):
    sim = simulator_factory(concurrency=5, submitted_seconds=30, processing_seconds=30)
    create(sim, n=3)
    assert sim.slots_in_use == 3
    over = post(sim, PATH, {"prompt": "x", "n": 3})
    assert over.status_code == 429
    assert over.json()["code"] == 1303
    assert over.json()["message"] == "parallel task over resource pack limit"
    create(sim, n=2)
    assert sim.slots_in_use == 5
    assert post(sim, PATH, {"prompt": "x", "n": 1}).json()["code"] == 1303
    assert sim.count_by_code[1303] == 2
    assert sim.max_slots_in_use == 5
    assert sim.create_count == 2


def test_slots_are_released_when_tasks_end(simulator_factory):
    sim = simulator_factory(concurrency=2)
    create(sim, n=2)
    assert post(sim, PATH, {"prompt": "x"}).json()["code"] == 1303
    wait_until(lambda: sim.slots_in_use == 0, what="slots released")
    create(sim, n=2)
    assert sim.max_slots_in_use == 2


def test_failed_task_releases_its_slots(simulator_factory):
    sim = simulator_factory(concurrency=1)
    create(sim, prompt="[fail]")
    wait_until(lambda: sim.slots_in_use == 0, what="failed task releases")
    create(sim)


def test_queries_use_no_slots_and_concurrency_is_a_runtime_knob(simulator_factory):
    sim = simulator_factory(concurrency=1, submitted_seconds=30)
    task = create(sim)
    with client(sim, max_retries=0) as c:
        assert c.get_image(task["task_id"]).task_id == task["task_id"]
        with pytest.raises(ConcurrencyLimitExceeded):
            c.create_image(ImageRequest(prompt="second"))
    sim.configure(concurrency=2)
    create(sim)
    assert sim.slots_in_use == 2
