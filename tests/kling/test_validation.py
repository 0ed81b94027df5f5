"""Every validation rule, with a case that passes and a case that breaks it."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from kling import ImageRequest, OmniImageRequest, ValidationError, validate_image_params, validate_omni_params
from kling.validation import MAX_IMAGE_BYTES
from tests.kling.conftest import image_b64

URL = "https://cdn.example.com/ref.png"


@cache
def img(kind: str) -> str:
    return {
        "png": lambda: image_b64(400, 400),
        "jpg": lambda: image_b64(400, 300, "JPEG"),
        "gif": lambda: image_b64(400, 400, "GIF"),
        "small": lambda: image_b64(299, 400),
        "wide": lambda: image_b64(760, 300),
        "tall": lambda: image_b64(300, 760),
        "edge": lambda: image_b64(750, 300),
        # Random pixels barely compress, so this PNG decodes to more than 10 MB.
        "big": lambda: image_b64(2000, 1800, noise=True),
    }[kind]()


def p(**kw: Any) -> dict[str, Any]:
    return {"prompt": "a red fox in the snow", **kw}


# (id, params, provider, expected (field, rule) or None for valid). Images are named, built lazily.
CASES: list[tuple[str, dict[str, Any], str, tuple[str, str] | None]] = [
    ("prompt ok", p(), "kling", None),
    ("prompt missing", {}, "kling", ("prompt", "required")),
    ("prompt blank", {"prompt": "  "}, "kling", ("prompt", "required")),
    ("prompt type", {"prompt": 5}, "kling", ("prompt", "type")),
    ("prompt 2500", {"prompt": "a" * 2500}, "kling", None),
    ("prompt 2501", {"prompt": "a" * 2501}, "kling", ("prompt", "max_length")),
    ("negative 2500", p(negative_prompt="b" * 2500), "kling", None),
    ("negative 2501", p(negative_prompt="b" * 2501), "kling", ("negative_prompt", "max_length")),
    (
        "negative with image",
        p(negative_prompt="blur", image=URL),
        "kling",
        ("negative_prompt", "forbidden_with_image"),
    ),
    ("image url", p(image=URL), "kling", None),
    ("image bad scheme", p(image="ftp://example.com/a.png"), "kling", ("image", "url")),
    ("image url no host", p(image="https://"), "kling", ("image", "url")),
    ("image data prefix", p(image="data:image/png;base64,@png"), "kling", ("image", "base64_prefix")),
    ("image not base64", p(image="not base64 at all!"), "kling", ("image", "base64")),
    ("image type", p(image=123), "kling", ("image", "type")),
    ("image png", p(image="@png"), "kling", None),
    ("image jpg", p(image="@jpg"), "kling", None),
    ("image gif", p(image="@gif"), "kling", ("image", "image_format")),
    ("image not an image", p(image="aGVsbG8gd29ybGQ="), "kling", ("image", "image_format")),
    ("image too small", p(image="@small"), "kling", ("image", "image_dimensions")),
    ("image too wide", p(image="@wide"), "kling", ("image", "image_aspect")),
    ("image too tall", p(image="@tall"), "kling", ("image", "image_aspect")),
    ("image aspect 2.5", p(image="@edge"), "kling", None),
    ("image > 10 MB", p(image="@big"), "kling", ("image", "image_size")),
    ("model v3", p(model_name="kling-v3"), "kling", None),
    ("model unknown", p(model_name="kling-v9"), "kling", ("model_name", "enum")),
    (
        "reference subject v1-5",
        p(model_name="kling-v1-5", image=URL, image_reference="subject"),
        "kling",
        None,
    ),
    ("reference face v2-1", p(model_name="kling-v2-1", image=URL, image_reference="face"), "kling", None),
    (
        "reference enum",
        p(model_name="kling-v1-5", image=URL, image_reference="body"),
        "kling",
        ("image_reference", "enum"),
    ),
    (
        "reference on v1",
        p(model_name="kling-v1", image=URL, image_reference="subject"),
        "kling",
        ("image_reference", "model_support"),
    ),
    (
        "reference without model",
        p(image=URL, image_reference="face"),
        "kling",
        ("image_reference", "model_support"),
    ),
    (
        "v1-5 image needs reference",
        p(model_name="kling-v1-5", image=URL),
        "kling",
        ("image_reference", "required_with_image"),
    ),
    ("v2 image without reference", p(model_name="kling-v2", image=URL), "kling", None),
    (
        "reference needs image",
        p(model_name="kling-v1-5", image_reference="subject"),
        "kling",
        ("image", "required_with_image_reference"),
    ),
    ("image_fidelity 0", p(image_fidelity=0), "kling", None),
    ("image_fidelity 1.0", p(image_fidelity=1.0), "kling", None),
    ("image_fidelity 1.5", p(image_fidelity=1.5), "kling", ("image_fidelity", "range")),
    ("image_fidelity -0.1", p(image_fidelity=-0.1), "kling", ("image_fidelity", "range")),
    ("image_fidelity str", p(image_fidelity="0.5"), "kling", ("image_fidelity", "type")),
    (
        "human_fidelity subject",
        p(model_name="kling-v1-5", image=URL, image_reference="subject", human_fidelity=0.45),
        "kling",
        None,
    ),
    (
        "human_fidelity face",
        p(model_name="kling-v1-5", image=URL, image_reference="face", human_fidelity=0.45),
        "kling",
        ("human_fidelity", "requires_subject_reference"),
    ),
    (
        "human_fidelity alone",
        p(human_fidelity=0.3),
        "kling",
        ("human_fidelity", "requires_subject_reference"),
    ),
    (
        "human_fidelity range",
        p(model_name="kling-v1-5", image=URL, image_reference="subject", human_fidelity=2),
        "kling",
        ("human_fidelity", "range"),
    ),
    ("resolution 2k v3", p(model_name="kling-v3", resolution="2k"), "kling", None),
    ("resolution 4k", p(resolution="4k"), "kling", ("resolution", "enum")),
    ("resolution 2k v1", p(model_name="kling-v1", resolution="2k"), "kling", ("resolution", "model_support")),
    (
        "resolution 2k + image v2-1",
        p(model_name="kling-v2-1", resolution="2k", image=URL),
        "kling",
        ("resolution", "model_support"),
    ),
    ("n 1", p(n=1), "kling", None),
    ("n 9", p(n=9), "kling", None),
    ("n 0", p(n=0), "kling", ("n", "range")),
    ("n 10", p(n=10), "kling", ("n", "range")),
    ("n bool", p(n=True), "kling", ("n", "type")),
    ("n float", p(n=2.0), "kling", ("n", "type")),
    ("ratio 21:9", p(aspect_ratio="21:9"), "kling", None),
    ("ratio 21:9 on v3", p(model_name="kling-v3", aspect_ratio="21:9"), "kling", None),
    ("ratio 5:4", p(aspect_ratio="5:4"), "kling", ("aspect_ratio", "enum")),
    ("callback ok", p(callback_url="https://hooks.example.com/cb"), "kling", None),
    ("callback bad", p(callback_url="not a url"), "kling", ("callback_url", "url")),
    ("external id ok", p(external_task_id="job-1"), "kling", None),
    ("external id type", p(external_task_id=7), "kling", ("external_task_id", "type")),
    ("unknown field", p(style="anime"), "kling", ("style", "unknown_field")),
    # The Appy Pie gateway's narrower rules.
    ("gw prompt 500", {"prompt": "a" * 500}, "appypie", None),
    ("gw prompt 501", {"prompt": "a" * 501}, "appypie", ("prompt", "max_length")),
    ("gw negative 200", p(negative_prompt="b" * 200), "appypie", None),
    ("gw negative 201", p(negative_prompt="b" * 201), "appypie", ("negative_prompt", "max_length")),
    ("gw ratio 2:3", p(aspect_ratio="2:3"), "appypie", None),
    ("gw ratio 21:9", p(aspect_ratio="21:9"), "appypie", ("aspect_ratio", "enum")),
    (
        "gw all fields",
        p(image=URL, image_fidelity=0.4, n=2, aspect_ratio="1:1", callback_url="https://h.example.com/c"),
        "appypie",
        None,
    ),
    ("gw model_name", p(model_name="kling-v1"), "appypie", ("model_name", "unknown_field")),
    ("gw resolution", p(resolution="1k"), "appypie", ("resolution", "unknown_field")),
    ("gw external id", p(external_task_id="job-1"), "appypie", ("external_task_id", "unknown_field")),
    ("gw n 10", p(n=10), "appypie", ("n", "range")),
    ("gw data prefix", p(image="data:image/png;base64,xx"), "appypie", ("image", "base64_prefix")),
]


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    out = dict(params)
    image = out.get("image")
    if isinstance(image, str) and "@" in image:
        head, _, name = image.partition("@")
        out["image"] = head + img(name)
    return out


@pytest.mark.parametrize(
    ("params", "provider", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_image_rules(params: dict[str, Any], provider: Any, expected: tuple[str, str] | None) -> None:
    errors = validate_image_params(resolve(params), provider=provider)
    if expected is None:
        assert errors == []
    else:
        assert expected in [(e.field, e.rule) for e in errors], errors


def test_big_image_really_is_over_the_limit() -> None:
    import base64

    assert len(base64.b64decode(img("big"))) > MAX_IMAGE_BYTES


def test_data_prefix_message_says_to_strip_it() -> None:
    (error,) = validate_image_params(p(image="data:image/png;base64," + img("png")))
    assert "strip" in error.message


def test_image_request_names_every_bad_field() -> None:
    with pytest.raises(ValidationError) as info:
        ImageRequest(prompt="", n=10, aspect_ratio="5:4", image_fidelity=3.0)
    text = str(info.value)
    for name in ("prompt", "n", "aspect_ratio", "image_fidelity"):
        assert name in text
    assert {(e.field, e.rule) for e in info.value.errors} == {
        ("prompt", "required"),
        ("n", "range"),
        ("aspect_ratio", "enum"),
        ("image_fidelity", "range"),
    }
    assert "between 1 and 9" in text


def test_image_request_body_omits_unset_fields() -> None:
    req = ImageRequest(prompt="fox", model_name="kling-v3", n=2)
    assert req.to_body() == {"prompt": "fox", "model_name": "kling-v3", "n": 2}


def test_image_request_from_params_reports_unknown_fields() -> None:
    with pytest.raises(ValidationError) as info:
        ImageRequest.from_params({"prompt": "fox", "colour": "red"})
    assert [(e.field, e.rule) for e in info.value.errors] == [("colour", "unknown_field")]
    assert ImageRequest.from_params({"prompt": "fox", "n": 3}) == ImageRequest(prompt="fox", n=3)


OMNI_CASES: list[tuple[str, dict[str, Any], tuple[str, str] | None]] = [
    ("ok", p(), None),
    (
        "full",
        p(model_name="kling-v3-omni", image_list=[{"image": URL}], resolution="4k", aspect_ratio="auto"),
        None,
    ),
    ("prompt missing", {}, ("prompt", "required")),
    ("model", p(model_name="kling-v3"), ("model_name", "enum")),
    ("resolution", p(resolution="8k"), ("resolution", "enum")),
    ("ratio", p(aspect_ratio="5:4"), ("aspect_ratio", "enum")),
    ("series ok", p(result_type="series", series_amount=9), None),
    ("series auto", p(result_type="series", series_amount="auto"), None),
    ("series range", p(result_type="series", series_amount=1), ("series_amount", "range")),
    ("series type", p(result_type="series", series_amount="many"), ("series_amount", "type")),
    ("series needs type", p(series_amount=3), ("series_amount", "requires_series")),
    ("result_type", p(result_type="grid"), ("result_type", "enum")),
    ("image_list type", p(image_list="x"), ("image_list", "type")),
    ("image_list item", p(image_list=[URL]), ("image_list[0]", "type")),
    (
        "image_list prefix",
        p(image_list=[{"image": "data:image/png;base64,x"}]),
        ("image_list[0].image", "base64_prefix"),
    ),
    ("unknown", p(negative_prompt="x"), ("negative_prompt", "unknown_field")),
]


@pytest.mark.parametrize(("params", "expected"), [c[1:] for c in OMNI_CASES], ids=[c[0] for c in OMNI_CASES])
def test_omni_rules(params: dict[str, Any], expected: tuple[str, str] | None) -> None:
    errors = validate_omni_params(params)
    if expected is None:
        assert errors == []
    else:
        assert expected in [(e.field, e.rule) for e in errors], errors


def test_omni_request_body_wraps_images() -> None:
    req = OmniImageRequest(prompt="fox", image_list=[URL], result_type="series", series_amount=3)
    assert req.to_body() == {
        "prompt": "fox",
        "image_list": [{"image": URL}],
        "result_type": "series",
        "series_amount": 3,
    }
    with pytest.raises(ValidationError, match="image_list"):
        OmniImageRequest(prompt="fox", image_list=("data:image/png;base64,abc",))
