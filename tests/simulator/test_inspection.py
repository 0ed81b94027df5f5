"""The `/_sim` HTTP inspection API mirrors the Python handle, for simulators in another process."""

from __future__ import annotations

import pytest
import requests

from tests.simulator.helpers import create, get, post, status_of, wait_until


def sim_get(sim, path, **params):
    resp = requests.get(sim.base_url + "/_sim" + path, params=params, timeout=5)
    return resp.status_code, resp.json()


def sim_post(sim, path, body=None):
    resp = requests.post(sim.base_url + "/_sim" + path, json=body if body is not None else {}, timeout=5)
    return resp.status_code, resp.json()


def test_stats_and_tasks(simulator_factory):
    sim = simulator_factory(concurrency=3, submitted_seconds=30)
    task = create(sim, n=2, external_task_id="ext-1")
    post(sim, "/v1/images/generations", {"prompt": "x", "n": 2})  # 1303
    status, stats = sim_get(sim, "/stats")
    assert status == 200
    assert stats["create_count"] == 1 and stats["tasks"] == 1
    assert stats["slots_in_use"] == 2 and stats["max_slots_in_use"] == 2 and stats["concurrency"] == 3
    assert stats["count_by_code"] == {"0": 1, "1303": 1}
    _, by_ext = sim_get(sim, "/tasks", external_task_id="ext-1")
    assert [t["task_id"] for t in by_ext] == [task["task_id"]]
    assert sim_get(sim, "/tasks", external_task_id="other")[1] == []
    _, all_tasks = sim_get(sim, "/tasks")
    assert all_tasks == sim.tasks()
    status, one = sim_get(sim, f"/tasks/{task['task_id']}")
    assert status == 200 and one["slots"] == 2 and one["status"] == "submitted"
    assert sim_get(sim, "/tasks/nope")[0] == 404
    assert sim_get(sim, "/health") == (200, {"ok": True, "base_url": sim.base_url})
    # Provider lookups and list pages are counted; the inspection endpoints above are not.
    assert (stats["query_count"], stats["list_count"]) == (0, 0)
    get(sim, f"/v1/images/generations/{task['task_id']}")
    get(sim, "/v1/images/generations", pageNum=1, pageSize=10)
    _, stats = sim_get(sim, "/stats")
    assert (stats["query_count"], stats["list_count"]) == (1, 1)


def test_config_read_and_change_at_run_time(simulator):
    status, cfg = sim_get(simulator, "/config")
    assert status == 200 and cfg["concurrency"] == 5
    assert cfg["secret_key"] == "***"  # secrets are masked
    status, cfg = sim_post(simulator, "/config", {"concurrency": 1, "submitted_seconds": 30})
    assert status == 200 and cfg["concurrency"] == 1
    assert simulator.config.concurrency == 1
    create(simulator)
    assert post(simulator, "/v1/images/generations", {"prompt": "x"}).json()["code"] == 1303
    status, err = sim_post(simulator, "/config", {"bogus": 1})
    assert status == 400 and "bogus" in err["error"]
    status, err = sim_post(simulator, "/config", {"callback_drop_rate": 5})
    assert status == 400 and "callback_drop_rate" in err["error"]
    assert simulator.config.concurrency == 1


def test_expire_image_hash_callbacks_and_reset(simulator, httpserver):
    httpserver.expect_request("/cb").respond_with_data("ok")
    task = create(simulator, callback_url=httpserver.url_for("/cb"))
    task_id = task["task_id"]
    wait_until(lambda: status_of(simulator, task_id) == "succeed" and len(simulator.deliveries) == 3)
    status, image = sim_get(simulator, f"/tasks/{task_id}/images/0")
    assert status == 200 and image["sha256"] == simulator.image_sha256(task_id, 0)
    assert image["bytes"] == simulator.image_size(task_id, 0)
    _, callbacks = sim_get(simulator, "/callbacks", task_id=task_id)
    assert [c["task_status"] for c in callbacks] == ["submitted", "processing", "succeed"]
    assert callbacks[0]["outcome"] == "delivered" and '"task_id"' in callbacks[0]["body"]
    assert sim_post(simulator, f"/tasks/{task_id}/expire") == (200, {"expired": True})
    assert sim_get(simulator, f"/tasks/{task_id}/images/0")[0] == 404
    assert requests.get(f"{simulator.base_url}/images/{task_id}/0.png", timeout=5).status_code == 404
    assert sim_post(simulator, "/tasks/nope/expire")[0] == 404
    assert sim_post(simulator, "/reset") == (200, {"reset": True})
    assert simulator.tasks() == [] and simulator.create_count == 0 and simulator.deliveries == []


def test_unknown_sim_path_is_json_404(simulator):
    status, body = sim_get(simulator, "/nothing")
    assert status == 404 and "error" in body


def test_remote_handle_matches_the_local_one(simulator_factory):
    from kling.simulator import SimulatorRemote

    sim = simulator_factory(submitted_seconds=30)
    task = create(sim, n=2, external_task_id="remote-1")
    with SimulatorRemote(sim.base_url) as remote:
        assert remote.create_count == 1 and remote.slots_in_use == 2 and remote.max_slots_in_use == 2
        assert remote.count_by_code == {0: 1}
        assert [t["task_id"] for t in remote.tasks_by_external_id("remote-1")] == [task["task_id"]]
        assert remote.task(task["task_id"])["status"] == "submitted"
        remote.configure(submitted_seconds=0.01, processing_seconds=0.01)
        assert sim.config.submitted_seconds == 0.01
        with pytest.raises(ValueError, match="bogus"):
            remote.configure(bogus=1)
        with pytest.raises(KeyError):
            remote.expire("nope")
        remote.reset()
        assert remote.tasks() == [] and remote.deliveries() == []


@pytest.mark.integration
def test_stop_is_clean():
    import threading

    from kling.simulator import Simulator

    sim = Simulator(submitted_seconds=0.01, processing_seconds=0.01).start()
    url = sim.base_url
    assert requests.get(url + "/_sim/health", timeout=5).status_code == 200
    sim.stop()
    sim.stop()  # idempotent
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-") and t.is_alive()]
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/_sim/health", timeout=5)
