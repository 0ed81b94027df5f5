"""The `POST /v1/jobs` body in the OpenAPI document: one schema per task kind (`kling.kinds`),
joined as a `oneOf` discriminated by `kind`. Absent `kind` means `image`, so only the image
schema leaves it optional; every other one requires its own value, which keeps `oneOf` exact.

The server checks more than these schemas say (model capabilities, image contents, combinations):
those answers are 422s naming each field.
"""

from __future__ import annotations

from kling import kind_rules as rules
from kling.kinds import DEFAULT_KIND, KIND_NAMES
from kling.validation import (
    ALL_RATIOS,
    IMAGE_REFERENCES,
    MAX_PROMPT,
    MODEL_CAPABILITIES,
    OMNI_MODELS,
    OMNI_RATIOS,
    OMNI_RESOLUTIONS,
    OMNI_RESULT_TYPES,
)
from webhook.body import MAX_WEBHOOK_URL
from webhook.job_fields import PROVIDERS
from webhook.openapi_control import request_properties
from webhook.openapi_parts import Schema, nullable, ref

IMAGE: Schema = {
    "type": "string",
    "description": "http(s) URL (at most 8,192 characters) or bare base64 (jpg/png, >= 300 px, <= 10 MB)",
}
PROMPT: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT}
COUNT: Schema = {"type": "integer", "minimum": 1, "maximum": 9}


def _choice(values: tuple[str, ...]) -> Schema:
    return nullable({"type": "string", "enum": list(values)})


def _images(key: str, low: int, high: int) -> Schema:
    item = {"type": "object", "required": [key], "additionalProperties": False, "properties": {key: IMAGE}}
    return nullable({"type": "array", "minItems": low, "maxItems": high, "items": item})


def _objects() -> Schema:
    return nullable({"type": "array", "items": {"type": "object", "additionalProperties": True}})


CAMERA_CONTROL = nullable(
    {
        "type": "object",
        "description": "`type` simple (with `config`, one non-zero axis from -10 to 10) or a preset move",
        "properties": {
            "type": {"type": "string", "enum": list(rules.CAMERA_TYPES)},
            "config": {
                "type": "object",
                "properties": {
                    a: {"type": "number", "minimum": -10, "maximum": 10} for a in rules.CAMERA_AXES
                },
            },
        },
    }
)


def _video_fields() -> dict[str, Schema]:
    return {
        "model_name": _choice(rules.VIDEO_MODELS),
        "negative_prompt": nullable({"type": "string", "maxLength": MAX_PROMPT}),
        "cfg_scale": nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "mode": _choice(rules.VIDEO_MODES),
        "duration": nullable(
            {"type": "string", "enum": list(rules.VIDEO_DURATIONS), "description": "Seconds, as a string"}
        ),
        "camera_control": CAMERA_CONTROL,
        "sound": _choice(rules.SOUND),
    }


def _kind_fields() -> dict[str, tuple[list[str], dict[str, Schema], str]]:
    """Per kind: (required fields, provider fields, description)."""
    expand_ratios = {
        f"{side}_expansion_ratio": nullable(
            {"type": "number", "minimum": 0, "maximum": rules.MAX_EXPANSION_RATIO}
        )
        for side in rules.EXPAND_SIDES
    }
    return {
        "image": (
            ["prompt"],
            {
                "prompt": PROMPT,
                "negative_prompt": nullable({"type": "string", "maxLength": MAX_PROMPT}),
                "model_name": _choice(tuple(MODEL_CAPABILITIES)),
                "image": nullable(IMAGE),
                "image_reference": _choice(IMAGE_REFERENCES),
                "image_fidelity": nullable({"type": "number", "minimum": 0, "maximum": 1}),
                "human_fidelity": nullable({"type": "number", "minimum": 0, "maximum": 1}),
                "resolution": _choice(("1k", "2k")),
                "n": nullable(COUNT),
                "aspect_ratio": _choice(ALL_RATIOS),
            },
            "Image generation (`/v1/images/generations`); holds `n` slots. The default kind.",
        ),
        "omni_image": (
            ["prompt"],
            {
                "model_name": _choice(OMNI_MODELS),
                "prompt": PROMPT,
                "image_list": _images("image", 0, 10),
                "element_list": _objects(),
                "resolution": _choice(OMNI_RESOLUTIONS),
                "result_type": _choice(OMNI_RESULT_TYPES),
                "series_amount": nullable(
                    {
                        "description": "2-9, or `auto` (holds 9 slots); only with result_type=series",
                        "oneOf": [
                            {"type": "integer", "minimum": 2, "maximum": 9},
                            {"type": "string", "enum": ["auto"]},
                        ],
                    }
                ),
                "n": nullable(COUNT),
                "aspect_ratio": _choice(OMNI_RATIOS),
            },
            "Omni image (`/v1/images/omni-image`); holds `n` slots, or `series_amount` for a series.",
        ),
        "expand": (
            ["image"],
            {"image": IMAGE, "prompt": nullable(PROMPT), "n": nullable(COUNT), **expand_ratios},
            "Image expansion (`/v1/images/editing/expand`): the new canvas at most 4x the original's "
            "area; holds `n` slots.",
        ),
        "multi_image": (
            ["prompt", "subject_image_list"],
            {
                "model_name": _choice(rules.MULTI_IMAGE_MODELS),
                "prompt": PROMPT,
                "negative_prompt": nullable({"type": "string", "maxLength": MAX_PROMPT}),
                "subject_image_list": {
                    **_images("subject_image", 1, rules.MAX_SUBJECT_IMAGES),
                    "nullable": False,
                },
                "scene_image": nullable(IMAGE),
                "style_image": nullable(IMAGE),
                "n": nullable(COUNT),
                "aspect_ratio": _choice(ALL_RATIOS),
            },
            "Multi-image to image (`/v1/images/multi-image2image`); holds `n` slots.",
        ),
        "try_on": (
            ["human_image", "cloth_image"],
            {"model_name": _choice(rules.TRY_ON_MODELS), "human_image": IMAGE, "cloth_image": IMAGE},
            "Virtual try-on (`/v1/images/kolors-virtual-try-on`); holds 1 slot.",
        ),
        "text_to_video": (
            ["prompt"],
            {"prompt": PROMPT, **_video_fields(), "aspect_ratio": _choice(rules.VIDEO_RATIOS)},
            "Text to video (`/v1/videos/text2video`); holds 1 slot; yields one video.",
        ),
        "image_to_video": (
            [],
            {
                "prompt": nullable(PROMPT),
                **_video_fields(),
                "image": nullable(IMAGE),
                "image_tail": nullable(IMAGE),
                "static_mask": nullable(IMAGE),
                "dynamic_masks": _objects(),
            },
            "Image to video (`/v1/videos/image2video`): `image` and/or `image_tail`; at most one of "
            "image_tail, masks, camera_control; holds 1 slot; yields one video.",
        ),
        "omni_video": (
            [],
            {
                "model_name": _choice(rules.OMNI_VIDEO_MODELS),
                "prompt": nullable(PROMPT),
                "image_list": nullable(
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["image_url"],
                            "properties": {
                                "image_url": IMAGE,
                                "type": _choice(rules.OMNI_VIDEO_FRAME_TYPES),
                            },
                        },
                    }
                ),
                "video_list": _objects(),
                "element_list": _objects(),
                "multi_prompt": _objects(),
                "mode": _choice(rules.VIDEO_MODES),
                "aspect_ratio": _choice(rules.VIDEO_RATIOS),
                "duration": nullable(
                    {
                        "type": "integer",
                        "minimum": rules.OMNI_VIDEO_MIN_SECONDS,
                        "maximum": rules.OMNI_VIDEO_MAX_SECONDS,
                    }
                ),
                "sound": _choice(rules.SOUND),
            },
            "Omni video (`/v1/videos/omni-video`): `prompt` or `multi_prompt`, 3-15 s; holds 1 slot; "
            "yields one video.",
        ),
    }


def _service_fields() -> dict[str, Schema]:
    return {
        "provider": _choice(PROVIDERS),
        "webhook_url": nullable(
            {
                "type": "string",
                "format": "uri",
                "maxLength": MAX_WEBHOOK_URL,
                "description": "Downstream notification URL (http/https, a public host)",
            }
        ),
        "metadata": nullable(
            {"type": "object", "additionalProperties": True, "description": "At most 16 KiB as JSON"}
        ),
        **request_properties(),
    }


def schema_name(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_")) + "JobRequest"


def request_schemas() -> dict[str, Schema]:
    """`JobRequest` (the discriminated union) and one `...JobRequest` schema per kind."""
    fields = _kind_fields()
    if tuple(fields) != KIND_NAMES:
        raise ValueError(f"request schemas {list(fields)} are not the registry's kinds {list(KIND_NAMES)}")
    out: dict[str, Schema] = {}
    for kind, (required, properties, description) in fields.items():
        default = kind == DEFAULT_KIND
        kind_field: Schema = {"type": "string", "enum": [kind]}
        out[schema_name(kind)] = {
            "type": "object",
            "required": required if default else ["kind", *required],
            "additionalProperties": False,
            "description": description,
            "properties": {
                "kind": nullable(kind_field) if default else kind_field,
                **properties,
                **_service_fields(),
            },
        }
    out["JobRequest"] = {
        "description": (
            "A job of one task kind: `kind` (default `image`) picks the provider fields, plus "
            "`provider`, `webhook_url` and `metadata`. Provider rules (model capabilities, image "
            "checks, the Appy Pie gateway's limits, slots) are checked too and answered with 422 "
            "naming each field. An unknown `kind` answers 422 naming `kind`."
        ),
        "oneOf": [ref(schema_name(kind)) for kind in KIND_NAMES],
        "discriminator": {
            "propertyName": "kind",
            "mapping": {kind: f"#/components/schemas/{schema_name(kind)}" for kind in KIND_NAMES},
        },
    }
    return out


__all__ = ["request_schemas", "schema_name"]
