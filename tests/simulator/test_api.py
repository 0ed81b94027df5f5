"""Official API: envelopes, lifecycle, validation, lookup by external id, list, omni image."""

from __future__ import annotations

import pytest

from kling import ImageRequest, OmniImageRequest, TaskStatus
from tests.simulator.helpers import client, create, get, post, status_of, wait_until

PATH = "/v1/images/generations"


def test_lifecycle_seen_by_polling(simulator):
    task = create(simulator, external_task_id="job-1", n=2)
    assert task["task_status"] == "submitted"
    assert task["task_info"]["external_task_id"] == "job-1"
    assert set(task) >= {
        "task_id",
        "task_status",
        "task_status_msg",
        "created_at",
        "updated_at",
        "task_result",
    }
    seen = set()

    def finished():
        s = status_of(simulator, task["task_id"])
        seen.add(s)
        return s == "succeed"

    wait_until(finished, what="succeed")
    assert "processing" in seen or "submitted" in seen
    body = get(simulator, f"{PATH}/{task['task_id']}").json()
    assert body["code"] == 0 and body["message"] == "SUCCEED" and body["request_id"]
    images = body["data"]["task_result"]["images"]
    assert [img["index"] for img in images] == [0, 1]
    assert all(img["url"].startswith(simulator.base_url + "/") for img in images)
    assert all(img["watermark_url"].startswith(simulator.base_url + "/") for img in images)
    assert body["data"]["updated_at"] > body["data"]["created_at"]
    history = [h["status"] for h in simulator.task(task["task_id"])["history"]]
    assert history == ["submitted", "processing", "succeed"]


def test_client_end_to_end_with_external_id(simulator):
    with client(simulator) as c:
        created = c.create_image(ImageRequest(prompt="a lighthouse", n=1), external_task_id="job-42")
        assert created.status is TaskStatus.SUBMITTED
        done = wait_until(
            lambda: (t := c.get_image(external_task_id="job-42")).status.is_final and t, what="final"
        )
        assert done.task_id == created.task_id
        assert done.status is TaskStatus.SUCCEEDED
        assert len(done.images) == 1
        assert [t.task_id for t in c.list_images()] == [created.task_id]
    assert len(simulator.tasks_by_external_id("job-42")) == 1


def test_duplicate_external_task_id_is_refused(simulator):
    first = create(simulator, external_task_id="dup")
    resp = post(simulator, PATH, {"prompt": "again", "external_task_id": "dup"})
    assert resp.status_code == 400
    assert resp.json()["code"] == 1201
    assert resp.json()["message"] == "external_task_id already exists"
    assert [t["task_id"] for t in simulator.tasks_by_external_id("dup")] == [first["task_id"]]
    assert simulator.create_count == 1


def test_client_create_with_existing_external_id_returns_that_task(simulator):
    first = create(simulator, external_task_id="seen")
    with client(simulator) as c:
        again = c.create_image(ImageRequest(prompt="again"), external_task_id="seen")
    assert again.task_id == first["task_id"]
    assert simulator.create_count == 1


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"prompt": "x", "n": 10}, 1201, "n"),
        ({"prompt": "x", "aspect_ratio": "5:4"}, 1201, "aspect_ratio"),
        ({"prompt": "x" * 2501}, 1201, "prompt"),
        ({"prompt": "x", "model_name": "kling-v9"}, 1201, "model_name"),
        ({"prompt": "x", "callback_url": "ftp://nope"}, 1201, "callback_url"),
        ({"negative_prompt": "x"}, 1200, "prompt"),
    ],
)
def test_validation_names_the_field(simulator, body, code, field):
    resp = post(simulator, PATH, body)
    assert resp.status_code == 400
    assert resp.json()["code"] == code
    assert field in resp.json()["message"]
    assert simulator.create_count == 0


def test_body_that_is_not_json_is_1200(simulator):
    import requests

    from tests.simulator.helpers import auth_headers

    resp = requests.post(simulator.base_url + PATH, data=b"{nope", headers=auth_headers(), timeout=5)
    assert resp.status_code == 400 and resp.json()["code"] == 1200


def test_unknown_task_is_1203_and_unknown_route_1202(simulator):
    missing = get(simulator, f"{PATH}/no-such-task")
    assert missing.status_code == 404 and missing.json()["code"] == 1203
    route = get(simulator, "/v1/videos/whatever")
    assert route.status_code == 404 and route.json()["code"] == 1202


def test_list_pages_and_ranges(simulator):
    ids = [create(simulator)["task_id"] for _ in range(3)]
    page1 = get(simulator, PATH, pageNum=1, pageSize=2).json()["data"]
    page2 = get(simulator, PATH, pageNum=2, pageSize=2).json()["data"]
    assert [t["task_id"] for t in page1 + page2] == list(reversed(ids))
    for params in ({"pageNum": 0}, {"pageNum": 1001}, {"pageSize": 0}, {"pageSize": 501}, {"pageSize": "x"}):
        resp = get(simulator, PATH, **params)
        assert resp.status_code == 400 and resp.json()["code"] == 1201
        assert next(iter(params)) in resp.json()["message"]


def test_policy_marker_refuses_at_create_with_1301(simulator):
    resp = post(simulator, PATH, {"prompt": "something [policy] here"})
    assert resp.status_code == 400 and resp.json()["code"] == 1301
    assert simulator.create_count == 0


def test_fail_marker_fails_the_task_later(simulator):
    task = create(simulator, prompt="draw [fail] please")
    wait_until(lambda: status_of(simulator, task["task_id"]) == "failed", what="failed")
    data = get(simulator, f"{PATH}/{task['task_id']}").json()["data"]
    assert data["task_status_msg"] == simulator.config.fail_message
    assert data["task_result"] == {}
    assert simulator.slots_in_use == 0


def test_markers_are_knobs(simulator):
    simulator.configure(policy_marker="BLOCK", fail_marker="BREAK")
    assert post(simulator, PATH, {"prompt": "BLOCK"}).json()["code"] == 1301
    assert post(simulator, PATH, {"prompt": "[policy]"}).json()["code"] == 0


def test_omni_image_create_get_and_series(simulator):
    with client(simulator) as c:
        single = c.create_omni_image(OmniImageRequest(prompt="a bowl", n=2), external_task_id="omni-1")
        done = wait_until(lambda: (t := c.get_omni_image(single.task_id)).status.is_final and t, what="omni")
        assert done.status is TaskStatus.SUCCEEDED and len(done.images) == 2
        assert c.get_omni_image(external_task_id="omni-1").task_id == single.task_id
    series = post(
        simulator, "/v1/images/omni-image", {"prompt": "a story", "result_type": "series", "series_amount": 3}
    )
    task_id = series.json()["data"]["task_id"]
    wait_until(
        lambda: get(simulator, f"/v1/images/omni-image/{task_id}").json()["data"]["task_status"] == "succeed"
    )
    result = get(simulator, f"/v1/images/omni-image/{task_id}").json()["data"]["task_result"]
    assert len(result["series_images"]) == 3
    # Omni tasks are not image-generation tasks.
    assert get(simulator, f"{PATH}/{task_id}").json()["code"] == 1203
    bad = post(simulator, "/v1/images/omni-image", {"prompt": "x", "resolution": "8k"})
    assert bad.status_code == 400 and "resolution" in bad.json()["message"]
