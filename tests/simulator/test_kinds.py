"""Every task kind through the simulator over HTTP: SDK round trips, validation and slot weights
from the registry, MP4 videos served and hashed, and 3.0-shape callbacks."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import requests

from kling import (
    KINDS,
    AppyPieClient,
    ConcurrencyLimitExceeded,
    TaskProvider,
    TaskStatus,
    UnsupportedOperation,
    ValidationError,
    parse_callback,
)
from kling.simulator import SimulatorRemote
from kling.simulator.videos import FRAMES, HEIGHT, WIDTH
from tests.kling.test_kinds import VALID
from tests.simulator.helpers import client, get, post, wait_until


def finished(c, kind, task_id):
    return wait_until(lambda: (t := c.get_task(kind, task_id)).status.is_final and t, what=f"{kind} done")


@pytest.mark.parametrize("kind", list(KINDS))
def test_sdk_round_trip_for_every_kind(simulator, kind):
    with client(simulator) as c:
        assert isinstance(c, TaskProvider)
        created = c.create_task(kind, VALID[kind], external_task_id=f"ext-{kind}")
        assert created.status is TaskStatus.SUBMITTED
        done = finished(c, kind, created.task_id)
        assert done.status is TaskStatus.SUCCEEDED
        assert c.get_task(kind, external_task_id=f"ext-{kind}").task_id == created.task_id
        assert [t.task_id for t in c.list_tasks(kind)] == [created.task_id]
        # A task is found only on its own kind's path.
        other = "image" if kind != "image" else "text_to_video"
        assert c.list_tasks(other) == []
    yields = KINDS[kind].yields
    assert done.outputs
    assert {o.type for o in done.outputs} == {yields}
    assert [o.index for o in done.outputs] == list(range(len(done.outputs)))
    if yields == "video":
        assert done.images == ()
        assert done.outputs[0].duration == FRAMES
        assert done.outputs[0].url.endswith("/0.mp4")
    else:
        assert [(i.index, i.url) for i in done.images + done.series_images] == [
            (o.index, o.url) for o in done.outputs
        ]
    assert simulator.task(created.task_id)["kind"] == kind


def test_create_images_still_works_through_the_generic_path(simulator):
    with client(simulator) as c:
        task = c.create_task("image", {"prompt": "a fox", "n": 2})
        assert c.get_image(task.task_id).task_id == task.task_id
        assert finished(c, "image", task.task_id).images[1].index == 1


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("expand", {"prompt": "x"}, "image"),
        ("try_on", {"human_image": "https://cdn.example.com/a.png"}, "cloth_image"),
        ("text_to_video", {"prompt": "x", "duration": "7"}, "duration"),
        ("omni_video", {"prompt": "x", "duration": 30}, "duration"),
    ],
)
def test_simulator_refuses_what_the_registry_refuses(simulator, kind, body, field):
    resp = post(simulator, KINDS[kind].path, body)
    assert resp.status_code == 400
    assert resp.json()["code"] in (1200, 1201)
    assert field in resp.json()["message"]
    assert simulator.create_count == 0
    with client(simulator) as c, pytest.raises(ValidationError) as caught:
        c.create_task(kind, body)
    assert field in {e.field for e in caught.value.errors}


def test_slot_weights_come_from_the_registry(simulator_factory):
    sim = simulator_factory(concurrency=9, submitted_seconds=30, processing_seconds=30)
    with client(sim, max_retries=0) as c:
        c.create_task("omni_image", {"prompt": "x", "result_type": "series", "series_amount": "auto"})
        assert sim.slots_in_use == 9
        with pytest.raises(ConcurrencyLimitExceeded):
            c.create_task("text_to_video", VALID["text_to_video"])
    sim.reset()
    with client(sim, max_retries=0) as c:
        c.create_task("omni_image", {"prompt": "x", "result_type": "series", "series_amount": 3})
        c.create_task("try_on", VALID["try_on"])
        c.create_task("text_to_video", VALID["text_to_video"])
        c.create_task("expand", VALID["expand"])  # n=2
        assert sim.slots_in_use == 3 + 1 + 1 + 2


def _boxes(data: bytes) -> list[tuple[bytes, int]]:
    """Top-level ISO BMFF boxes as (type, size); they must tile the file exactly."""
    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8
        out.append((kind, size))
        pos += size
    assert pos == len(data)
    return out


def test_videos_are_served_streamed_and_hashed(simulator_factory):
    sim = simulator_factory(video_bytes=300_000)
    with client(sim) as c:
        task = c.create_task("text_to_video", VALID["text_to_video"])
        done = finished(c, "text_to_video", task.task_id)
    (video,) = done.outputs
    with requests.get(video.url, stream=True, timeout=5) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "video/mp4"
        assert int(resp.headers["Content-Length"]) == 300_000
        body = b"".join(resp.iter_content(64 * 1024))
    assert len(body) == 300_000
    assert [k for k, _ in _boxes(body)][:3] == [b"ftyp", b"moov", b"mdat"]
    assert {k for k, _ in _boxes(body)[3:]} == {b"free"}
    digest = hashlib.sha256(body).hexdigest()
    assert sim.video_sha256(task.task_id, 0) == digest
    assert sim.video_size(task.task_id, 0) == 300_000
    assert get(sim, f"/_sim/tasks/{task.task_id}/videos/0").json() == {"sha256": digest, "bytes": 300_000}
    with SimulatorRemote(sim.base_url) as remote:
        assert remote.video_sha256(task.task_id, 0) == digest
        assert remote.video_sha256(task.task_id, 0, watermark=True) != digest
    # Stable: the same URL serves the same bytes; the watermarked copy is another file.
    assert hashlib.sha256(requests.get(video.url, timeout=5).content).hexdigest() == digest
    assert video.watermark_url is not None
    assert sim.video_sha256(task.task_id, 0, watermark=True) != digest
    # A video task has no image URLs, and a missing video is a 404.
    assert (
        requests.get(video.url.replace("/videos/", "/images/").replace(".mp4", ".png"), timeout=5).status_code
        == 404
    )
    assert requests.get(video.url.replace("/0.mp4", "/1.mp4"), timeout=5).status_code == 404


def test_natural_video_is_a_small_h264_mp4(simulator):
    with client(simulator) as c:
        task = c.create_task("image_to_video", VALID["image_to_video"])
        finished(c, "image_to_video", task.task_id)
    data = simulator.video_bytes(task.task_id, 0)
    assert len(data) < 20_000
    assert [k for k, _ in _boxes(data)] == [b"ftyp", b"moov", b"mdat"]
    assert b"avc1" in data and b"avcC" in data
    assert struct.pack(">HH", WIDTH, HEIGHT) in data


def test_chromium_plays_the_simulated_video(simulator, browser):
    with client(simulator) as c:
        task = c.create_task("omni_video", VALID["omni_video"])
        (video,) = finished(c, "omni_video", task.task_id).outputs
    page = f"<html><body><video id='v' muted src='{video.url}'></video></body></html>"
    browser.get(simulator.base_url + "/_sim/health")  # same origin as the video
    browser.execute_script("document.open(); document.write(arguments[0]); document.close();", page)
    browser.execute_script("document.getElementById('v').play()")
    state = wait_until(
        lambda: (
            (
                (
                    s := browser.execute_script(
                        "const v = document.getElementById('v');"
                        "return {ready: v.readyState, w: v.videoWidth, h: v.videoHeight, d: v.duration,"
                        " error: v.error && v.error.code, t: v.currentTime}"
                    )
                )["error"]
                or (s["ready"] >= 2 and s["t"] > 0)
            )
            and s
        ),
        timeout=20,
        what="the video to play",
    )
    assert state["error"] is None
    assert (state["w"], state["h"], state["d"]) == (WIDTH, HEIGHT, FRAMES)


@pytest.fixture
def receiver(httpserver):
    httpserver.expect_request("/cb", method="POST").respond_with_data("ok")
    return httpserver


def test_v3_callback_shape(simulator_factory, receiver):
    sim = simulator_factory(callback_shape="v3")
    with client(sim) as c:
        task = c.create_task(
            "text_to_video",
            VALID["text_to_video"],
            callback_url=receiver.url_for("/cb"),
            external_task_id="v3-1",
        )
    wait_until(lambda: len(receiver.log) == 3 and len(sim.deliveries) == 3, what="3 callbacks")
    bodies = [json.loads(req.get_data()) for req, _ in receiver.log]
    assert [b["status"] for b in bodies] == ["submitted", "processing", "succeeded"]
    assert all("task_id" not in b and b["id"] == task.task_id for b in bodies)
    final = parse_callback(receiver.log[-1][0].get_data())
    assert final.status is TaskStatus.SUCCEEDED
    assert final.external_task_id == "v3-1"
    (video,) = final.outputs
    assert (video.type, video.index, video.duration) == ("video", 0, FRAMES)
    assert video.url.endswith(f"/videos/{task.task_id}/0.mp4")
    assert final.units == 1
    assert bodies[-1]["billing"] == [{"charge_type": "unit", "amount": "1", "package_type": "video"}]


def test_legacy_callback_shape_is_the_default_and_carries_videos(simulator, receiver):
    with client(simulator) as c:
        task = c.create_task("text_to_video", VALID["text_to_video"], callback_url=receiver.url_for("/cb"))
    wait_until(lambda: len(receiver.log) == 3, what="3 callbacks")
    body = json.loads(receiver.log[-1][0].get_data())
    assert body["task_status"] == "succeed"
    assert body["task_result"]["videos"][0]["id"] == f"{task.task_id}-0"
    assert parse_callback(receiver.log[-1][0].get_data()).outputs[0].type == "video"


def test_bad_callback_shape_knob_is_refused(simulator):
    with pytest.raises(ValueError, match="callback_shape"):
        simulator.configure(callback_shape="v4")
    resp = requests.post(simulator.base_url + "/_sim/config", json={"video_bytes": -1}, timeout=5)
    assert resp.status_code == 400
    assert "video_bytes" in resp.json()["error"]


def test_gateway_offers_image_kind_only(simulator):
    with AppyPieClient(subscription_key="any", base_url=simulator.base_url) as gw:
        assert isinstance(gw, TaskProvider)
        task = gw.create_task("image", {"prompt": "a fox"})
        assert gw.get_task("image", task.task_id).task_id == task.task_id
        for kind in set(KINDS) - {"image"}:
            with pytest.raises(UnsupportedOperation):
                gw.create_task(kind, VALID[kind])
    assert simulator.create_count == 1
