"""Both callback generations, for every kind, parse into the same `Task`; query answers of every
kind through the client; watermark-only outputs; failure reasons."""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer

from kling import KINDS, CallbackError, KlingClient, Output, TaskStatus, failure_reason, parse_callback
from tests.samples import load, raw


def shape(outputs: tuple[Output, ...]) -> list[tuple[object, ...]]:
    # The 3.0 shape carries no video id; everything else must agree.
    return [(o.type, o.index, o.url, o.watermark_url, o.duration, o.watermark_only) for o in outputs]


@pytest.mark.parametrize("kind", list(KINDS))
def test_both_callback_shapes_parse_into_the_same_task(kind: str) -> None:
    legacy = parse_callback(raw(f"callbacks/legacy-{kind}-succeed"))
    v3 = parse_callback(raw(f"callbacks/standard-{kind}-succeeded"))
    assert legacy.status is v3.status is TaskStatus.SUCCEEDED
    assert legacy.task_id == v3.task_id
    assert legacy.external_task_id == v3.external_task_id is not None
    assert legacy.units == v3.units is not None
    assert legacy.created_at == v3.created_at
    assert legacy.outputs
    assert shape(legacy.outputs) == shape(v3.outputs)
    assert {o.type for o in legacy.outputs} == {KINDS[kind].yields}
    assert [(i.index, i.url) for i in legacy.images + legacy.series_images] == [
        (i.index, i.url) for i in v3.images
    ]
    if KINDS[kind].yields == "video":
        assert legacy.images == v3.images == ()
        assert legacy.outputs[0].duration == 5.1
        assert legacy.outputs[0].id == f"{legacy.task_id}-v0"
    assert legacy.failure_reason is v3.failure_reason is None


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "image"])
def test_query_answer_of_every_kind_through_the_client(
    kind: str, server: HTTPServer, client: KlingClient
) -> None:
    body = load(f"kling/query-{kind}-succeed-200")
    task_id = body["data"]["task_id"]
    server.expect_request(f"{KINDS[kind].path}/{task_id}", method="GET").respond_with_json(body)
    task = client.get_task(kind, task_id)
    assert shape(task.outputs) == shape(parse_callback(raw(f"callbacks/legacy-{kind}-succeed")).outputs)


def test_omni_series_images_become_outputs() -> None:
    task = parse_callback(raw("callbacks/legacy-omni_image-succeed"))
    assert task.images == ()
    assert [o.index for o in task.outputs] == [0, 1, 2]
    assert [o.url for o in task.outputs] == [i.url for i in task.series_images]


def test_watermark_only_is_not_no_output() -> None:
    legacy = parse_callback(raw("callbacks/legacy-watermark-only"))
    (image,) = legacy.images
    (out,) = legacy.outputs
    assert out.watermark_only and out.url == out.watermark_url == image.url
    assert out.url.endswith("_watermark_image_0.png")
    v3 = parse_callback(raw("callbacks/standard-watermark-only"))
    (video,) = v3.outputs
    assert (video.type, video.watermark_only) == ("video", True)
    assert video.url == video.watermark_url
    # Both filled: the raw file is the url, never the watermarked one.
    full = parse_callback(raw("callbacks/standard-text_to_video-succeeded")).outputs[0]
    assert not full.watermark_only
    assert full.url != full.watermark_url


def test_failed_tasks_keep_their_message_and_reason() -> None:
    for name in ("callbacks/legacy-failed", "callbacks/standard-failed"):
        task = parse_callback(raw(name))
        assert task.status is TaskStatus.FAILED
        assert task.status_message == "Failure to pass the risk control system"
        assert task.failure_reason == "content_policy"
        assert task.outputs == ()
    processing = parse_callback(raw("callbacks/standard-processing"))
    assert processing.status is TaskStatus.PROCESSING
    assert processing.failure_reason is None


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("Failure to pass the risk control system", "content_policy"),
        ("The content violates our policies", "content_policy"),
        ("sensitive words detected", "content_policy"),
        ("task timeout", "timeout"),
        ("Generation timed out, please retry", "timeout"),
        ("internal error", "internal"),
        ("Server error 5000", "internal"),
        ("", "other"),
        (None, "other"),
        ("something new", "other"),
    ],
)
def test_failure_reason_is_a_pure_mapping(message: str | None, reason: str) -> None:
    assert failure_reason(message) == reason


def test_output_indexes_stay_unique_and_bounded() -> None:
    body = load("callbacks/legacy-omni_image-succeed")
    result = body["task_result"]
    result["images"] = [dict(result["series_images"][0])]
    task = parse_callback(json.dumps(body).encode())
    assert [o.index for o in task.outputs] == [0, 1, 2, 3]
    result["images"] = [dict(result["series_images"][0], index=0) for _ in range(1001)]
    with pytest.raises(CallbackError, match="too many outputs"):
        parse_callback(json.dumps(body).encode())
    body = load("callbacks/standard-omni_video-succeeded")
    body["outputs"] = [*body["outputs"], {"type": "audio", "url": "https://cdn.klingai.com/a.mp3"}]
    assert [o.type for o in parse_callback(json.dumps(body).encode()).outputs] == ["video"]
