"""The demo's batch plan (klingctl/demo_batch.py), pure: the requests it sends are valid for their
kind, and each job expects the outputs its kind yields."""

from __future__ import annotations

from kling.kinds import kind_for
from kling.validation import ALL_RATIOS
from klingctl.demo_batch import KIND_REQUESTS, DemoJob, plan_batch


def test_the_kind_requests_are_a_text_to_video_and_a_try_on_job_valid_for_their_kind() -> None:
    assert [r["kind"] for r in KIND_REQUESTS] == ["text_to_video", "try_on"]
    for request in KIND_REQUESTS:
        params = {k: v for k, v in request.items() if k != "kind"}
        assert kind_for(request["kind"]).validate(params, "kling") == [], request["kind"]


def test_each_job_expects_the_outputs_of_its_kind() -> None:
    video = DemoJob(
        "v", {"prompt": "x", "duration": "5", "aspect_ratio": "16:9"}, "archived", kind="text_to_video"
    )
    try_on = DemoJob("t", {"human_image": "h", "cloth_image": "c"}, "archived", kind="try_on")
    image = DemoJob("i", {"prompt": "x", "n": 3, "aspect_ratio": "1:1"}, "archived")
    assert [(j.outputs, j.ratio) for j in (video, try_on, image)] == [(1, "16:9"), (1, "-"), (3, "1:1")]


def test_the_image_plan_has_one_policy_prompt_n_1_to_4_and_every_ratio() -> None:
    batch = plan_batch(12, seed=7)
    assert sum("[policy]" in p["prompt"] for p in batch) == 1
    assert {p["n"] for p in batch} <= {1, 2, 3, 4}
    assert {p["aspect_ratio"] for p in batch} == set(ALL_RATIOS)
    for params in batch:
        assert kind_for("image").validate(params, "kling") == []
