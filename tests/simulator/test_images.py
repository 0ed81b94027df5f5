"""Image URLs: real PNGs, deterministic, padded to a byte size, streamed; 404 once expired."""

from __future__ import annotations

import hashlib
import io

import requests
from PIL import Image

from kling.simulator import images
from tests.simulator.helpers import create, get, status_of, wait_until


def finished_images(sim, **body):
    task = create(sim, **body)
    wait_until(lambda: status_of(sim, task["task_id"]) == "succeed", what="succeed")
    data = get(sim, f"/v1/images/generations/{task['task_id']}").json()["data"]
    return task["task_id"], data["task_result"]["images"]


def test_images_are_real_deterministic_pngs(simulator_factory):
    sim = simulator_factory(image_width=40, image_height=30)
    task_id, imgs = finished_images(sim, n=2)
    first = requests.get(imgs[0]["url"], timeout=5)
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(first.content)).size == (40, 30)
    assert hashlib.sha256(first.content).hexdigest() == sim.image_sha256(task_id, 0)
    assert requests.get(imgs[0]["url"], timeout=5).content == first.content
    second = requests.get(imgs[1]["url"], timeout=5).content
    assert second != first.content
    assert sim.image_bytes(task_id, 1) == second
    watermark = requests.get(imgs[0]["watermark_url"], timeout=5)
    assert watermark.status_code == 200 and watermark.content != first.content


def test_padded_to_byte_size_and_still_a_valid_png(simulator_factory):
    sim = simulator_factory(image_bytes=3 * 1024 * 1024 + 5)
    task_id, imgs = finished_images(sim)
    resp = requests.get(imgs[0]["url"], timeout=5)
    assert int(resp.headers["Content-Length"]) == len(resp.content) == 3 * 1024 * 1024 + 5
    img = Image.open(io.BytesIO(resp.content))
    img.load()  # CRCs and chunk structure are checked while decoding
    assert img.size == (64, 64)
    assert sim.image_size(task_id, 0) == len(resp.content)


def test_hundred_megabytes_streamed(simulator_factory):
    size = 100 * 1024 * 1024 + 1
    sim = simulator_factory(image_bytes=size)
    task_id, imgs = finished_images(sim)
    digest, total = hashlib.sha256(), 0
    with requests.get(imgs[0]["url"], stream=True, timeout=10) as resp:
        assert int(resp.headers["Content-Length"]) == size
        for chunk in resp.iter_content(1024 * 1024):
            digest.update(chunk)
            total += len(chunk)
    assert total == size
    assert digest.hexdigest() == sim.image_sha256(task_id, 0)


def test_padding_plan_splits_into_chunks_and_tiny_gaps_overshoot(monkeypatch):
    monkeypatch.setattr(images, "MAX_CHUNK_DATA", 100)
    base = images.base_png("x", 8, 8)
    plan = images.padding_plan(len(base), len(base) + 250)
    assert images.total_size(base, plan) == len(base) + 250 and len(plan) == 3
    Image.open(io.BytesIO(b"".join(images.stream_png(base, plan)))).load()
    tiny = images.padding_plan(len(base), len(base) + 3)
    assert images.total_size(base, tiny) == len(base) + images.CHUNK_OVERHEAD
    assert images.padding_plan(len(base), None) == []


def test_expire_makes_urls_404(simulator):
    task_id, imgs = finished_images(simulator)
    assert requests.get(imgs[0]["url"], timeout=5).status_code == 200
    simulator.expire(task_id)
    assert requests.get(imgs[0]["url"], timeout=5).status_code == 404
    assert requests.get(imgs[0]["watermark_url"], timeout=5).status_code == 404
    # The task itself is still there, like Kling's record after deletion of the files.
    assert status_of(simulator, task_id) == "succeed"


def test_retention_and_clock_offset(simulator_factory):
    sim = simulator_factory(retention_seconds=30 * 24 * 3600)
    task_id, imgs = finished_images(sim)
    assert requests.get(imgs[0]["url"], timeout=5).status_code == 200
    sim.configure(clock_offset_seconds=30 * 24 * 3600 + 1)
    assert requests.get(imgs[0]["url"], timeout=5).status_code == 404
    assert sim.task(task_id)["expired"] is True


def test_unknown_or_unfinished_images_404(simulator_factory):
    sim = simulator_factory(submitted_seconds=30)
    task = create(sim)
    url = f"{sim.base_url}/images/{task['task_id']}/0.png"
    assert requests.get(url, timeout=5).status_code == 404
    assert requests.get(f"{sim.base_url}/images/nope/0.png", timeout=5).status_code == 404
