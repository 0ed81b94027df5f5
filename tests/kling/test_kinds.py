"""The task-kind registry: paths, named validation errors per kind, slot weights, what each yields."""

from __future__ import annotations

from typing import Any

import pytest

from kling import ValidationError
from kling.kinds import KINDS, kind_for

URL = "https://cdn.example.com/ref.png"
OTHER = "https://cdn.example.com/cloth.png"

EXPECTED_PATHS = {
    "image": ("/v1/images/generations", "image"),
    "omni_image": ("/v1/images/omni-image", "image"),
    "expand": ("/v1/images/editing/expand", "image"),
    "multi_image": ("/v1/images/multi-image2image", "image"),
    "try_on": ("/v1/images/kolors-virtual-try-on", "image"),
    "text_to_video": ("/v1/videos/text2video", "video"),
    "image_to_video": ("/v1/videos/image2video", "video"),
    "omni_video": ("/v1/videos/omni-video", "video"),
}

# A minimal valid body per kind (the simulator tests reuse these).
VALID: dict[str, dict[str, Any]] = {
    "image": {"prompt": "a fox"},
    "omni_image": {"prompt": "a fox", "image_list": [{"image": URL}]},
    "expand": {"image": URL, "left_expansion_ratio": 0.5, "right_expansion_ratio": 0.5, "n": 2},
    "multi_image": {"prompt": "a fox", "subject_image_list": [{"subject_image": URL}], "scene_image": OTHER},
    "try_on": {"human_image": URL, "cloth_image": OTHER, "model_name": "kolors-virtual-try-on-v1-5"},
    "text_to_video": {"prompt": "a fox runs", "duration": "5", "mode": "std", "aspect_ratio": "16:9"},
    "image_to_video": {"image": URL, "prompt": "it runs", "duration": "10"},
    "omni_video": {
        "prompt": "a fox",
        "image_list": [{"image_url": URL, "type": "first_frame"}],
        "duration": 7,
    },
}

# (kind, params, expected (field, rule)): each breaks exactly one named rule.
BROKEN: list[tuple[str, dict[str, Any], tuple[str, str]]] = [
    ("image", {"prompt": "x", "n": 10}, ("n", "range")),
    ("omni_image", {"prompt": "x", "series_amount": 3}, ("series_amount", "requires_series")),
    ("expand", {"prompt": "x"}, ("image", "required")),
    ("expand", {"image": URL, "up_expansion_ratio": 2.5}, ("up_expansion_ratio", "range")),
    (
        "expand",
        {"image": URL, **{f"{s}_expansion_ratio": 1 for s in ("up", "down", "left", "right")}},
        ("up_expansion_ratio", "expanded_area"),
    ),
    ("expand", {"image": URL, "colour": "red"}, ("colour", "unknown_field")),
    ("multi_image", {"prompt": "x"}, ("subject_image_list", "required")),
    (
        "multi_image",
        {"prompt": "x", "subject_image_list": [{"subject_image": URL}] * 5},
        ("subject_image_list", "length"),
    ),
    (
        "multi_image",
        {"prompt": "x", "subject_image_list": [{"subject_image": "data:image/png;base64,AAAA"}]},
        ("subject_image_list[0].subject_image", "base64_prefix"),
    ),
    ("multi_image", {**VALID["multi_image"], "model_name": "kling-v1"}, ("model_name", "enum")),
    ("try_on", {"human_image": URL}, ("cloth_image", "required")),
    ("try_on", {**VALID["try_on"], "model_name": "kolors-v2"}, ("model_name", "enum")),
    ("try_on", {**VALID["try_on"], "prompt": "x"}, ("prompt", "unknown_field")),
    ("text_to_video", {"duration": "5"}, ("prompt", "required")),
    ("text_to_video", {"prompt": "x", "duration": "7"}, ("duration", "enum")),
    ("text_to_video", {"prompt": "x", "aspect_ratio": "4:3"}, ("aspect_ratio", "enum")),
    ("text_to_video", {"prompt": "x", "cfg_scale": 2}, ("cfg_scale", "range")),
    ("text_to_video", {"prompt": "x", "mode": "max"}, ("mode", "enum")),
    ("text_to_video", {"prompt": "x", "model_name": "kling-v9"}, ("model_name", "enum")),
    ("text_to_video", {"prompt": "x", "camera_control": {"type": "spin"}}, ("camera_control.type", "enum")),
    (
        "text_to_video",
        {"prompt": "x", "camera_control": {"type": "simple", "config": {"pan": 3, "zoom": 2}}},
        ("camera_control.config", "one_axis"),
    ),
    ("image_to_video", {"prompt": "x"}, ("image", "required")),
    (
        "image_to_video",
        {"image": URL, "image_tail": OTHER, "camera_control": {"type": "forward_up"}},
        ("camera_control", "exclusive"),
    ),
    ("image_to_video", {"image": URL, "aspect_ratio": "16:9"}, ("aspect_ratio", "unknown_field")),
    ("omni_video", {"duration": 5}, ("prompt", "required")),
    ("omni_video", {"prompt": "x", "duration": 20}, ("duration", "range")),
    (
        "omni_video",
        {"prompt": "x", "image_list": [{"image_url": URL, "type": "middle"}]},
        ("image_list[0].type", "enum"),
    ),
    (
        "omni_video",
        {"prompt": "x", "element_list": [{"element_id": i} for i in range(11)]},
        ("image_list", "max_references"),
    ),
    ("omni_video", {"prompt": "x", "model_name": "kling-v3"}, ("model_name", "enum")),
]


def test_registry_has_every_kind_with_its_path_and_output() -> None:
    assert {name: (k.path, k.yields) for name, k in KINDS.items()} == EXPECTED_PATHS
    kind = kind_for("text_to_video")
    assert kind.create_path == kind.list_path == "/v1/videos/text2video"
    assert kind.query_path("abc") == "/v1/videos/text2video/abc"


@pytest.mark.parametrize("name", list(EXPECTED_PATHS))
def test_minimal_body_of_every_kind_is_valid(name: str) -> None:
    assert kind_for(name).validate(VALID[name], "kling") == []


@pytest.mark.parametrize(
    ("name", "params", "expected"), BROKEN, ids=[f"{k}-{e[0]}-{e[1]}" for k, _, e in BROKEN]
)
def test_each_rule_has_a_named_error(name: str, params: dict[str, Any], expected: tuple[str, str]) -> None:
    errors = kind_for(name).validate(params, "kling")
    assert [(e.field, e.rule) for e in errors] == [expected]


def test_unknown_kind_is_a_named_validation_error() -> None:
    for bad in ("video", "", None, 3):
        with pytest.raises(ValidationError) as caught:
            kind_for(bad)
        assert [(e.field, e.rule) for e in caught.value.errors] == [("kind", "enum")]
        assert "text_to_video" in caught.value.errors[0].message


def test_gateway_offers_only_image_generation() -> None:
    assert kind_for("image").validate({"prompt": "x"}, "appypie") == []
    for name in set(KINDS) - {"image"}:
        errors = kind_for(name).validate(VALID[name], "appypie")
        assert [(e.field, e.rule) for e in errors] == [("kind", "provider_support")]


@pytest.mark.parametrize(
    ("name", "params", "slots"),
    [
        ("image", {"prompt": "x"}, 1),
        ("image", {"prompt": "x", "n": 4}, 4),
        ("omni_image", {"prompt": "x", "n": 3}, 3),
        ("omni_image", {"prompt": "x", "result_type": "series", "series_amount": 5}, 5),
        ("omni_image", {"prompt": "x", "result_type": "series", "series_amount": "auto"}, 9),
        ("omni_image", {"prompt": "x", "result_type": "series"}, 9),
        ("expand", {"image": URL, "n": 2}, 2),
        ("multi_image", {"n": 3}, 3),
        ("try_on", {"human_image": URL, "n": 4}, 1),
        ("text_to_video", {"prompt": "x"}, 1),
        ("image_to_video", {"image": URL}, 1),
        ("omni_video", {"prompt": "x", "duration": 15}, 1),
    ],
)
def test_slot_weights(name: str, params: dict[str, Any], slots: int) -> None:
    assert kind_for(name).slots(params) == slots


def test_yields_counts_for_the_simulator() -> None:
    assert kind_for("omni_image").output_count({"result_type": "series", "series_amount": 3}) == 3
    assert kind_for("expand").output_count({"n": 2}) == 2
    assert kind_for("try_on").output_count({}) == 1
    assert kind_for("omni_video").output_count({"n": 5}) == 1
