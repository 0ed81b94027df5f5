"""Field rules of the task kinds beyond image generation and omni image (KLING_NOTES "Task kinds").

Each `validate_*` works on the raw wire JSON, like `validate_image_params`, and returns every
problem as a named `FieldError`; `kling.kinds` wires them into the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kling.errors import FieldError
from kling.validation import ALL_RATIOS, MAX_PROMPT, _Checker, _image_field

COMMON = frozenset({"callback_url", "external_task_id"})

EXPAND_SIDES = ("up", "down", "left", "right")
EXPAND_FIELDS = COMMON | {"image", "prompt", "n"} | {f"{s}_expansion_ratio" for s in EXPAND_SIDES}
# Each side may grow up to 2x the original; the whole canvas at most 4x (new area <= 3x the original).
MAX_EXPANSION_RATIO = 2.0
MAX_EXPANDED_AREA = 4.0

MULTI_IMAGE_MODELS = ("kling-v2", "kling-v2-1")
MULTI_IMAGE_FIELDS = COMMON | {
    "model_name",
    "prompt",
    "negative_prompt",
    "subject_image_list",
    "scene_image",
    "style_image",
    "n",
    "aspect_ratio",
}
MAX_SUBJECT_IMAGES = 4

TRY_ON_MODELS = ("kolors-virtual-try-on-v1", "kolors-virtual-try-on-v1-5")
TRY_ON_FIELDS = COMMON | {"model_name", "human_image", "cloth_image"}

# Where the docs give no per-model list, every published video model is allowed.
VIDEO_MODELS = (
    "kling-v1",
    "kling-v1-5",
    "kling-v1-6",
    "kling-v2-master",
    "kling-v2-1",
    "kling-v2-1-master",
    "kling-v2-5-turbo",
    "kling-v2-6",
    "kling-v3",
)
VIDEO_RATIOS = ("16:9", "9:16", "1:1")
VIDEO_MODES = ("std", "pro")
VIDEO_DURATIONS = ("5", "10")
SOUND = ("on", "off")
CAMERA_TYPES = ("simple", "down_back", "forward_up", "right_turn_forward", "left_turn_forward")
CAMERA_AXES = ("horizontal", "vertical", "pan", "tilt", "roll", "zoom")
VIDEO_FIELDS = COMMON | {
    "model_name",
    "prompt",
    "negative_prompt",
    "cfg_scale",
    "mode",
    "duration",
    "camera_control",
    "sound",
}
TEXT_TO_VIDEO_FIELDS = VIDEO_FIELDS | {"aspect_ratio"}
IMAGE_TO_VIDEO_FIELDS = VIDEO_FIELDS | {"image", "image_tail", "static_mask", "dynamic_masks"}

OMNI_VIDEO_MODELS = ("kling-video-o1", "kling-v3-omni")
OMNI_VIDEO_FIELDS = COMMON | {
    "model_name",
    "prompt",
    "image_list",
    "video_list",
    "element_list",
    "multi_prompt",
    "mode",
    "aspect_ratio",
    "duration",
    "sound",
}
OMNI_VIDEO_FRAME_TYPES = ("first_frame", "end_frame")
OMNI_VIDEO_MIN_SECONDS, OMNI_VIDEO_MAX_SECONDS = 3, 15
MAX_OMNI_VIDEO_REFERENCES = 10


def _image_list(c: _Checker, name: str, key: str, *, low: int, high: int, required: bool) -> None:
    """A list of `{key: image}` objects, `low`-`high` long."""
    items = c.params.get(name)
    if items is None:
        if required:
            c.add(name, "required", "is required")
        return
    if not isinstance(items, list):
        c.add(name, "type", f"must be a list of {{'{key}': ...}} objects")
        return
    if not low <= len(items) <= high:
        c.add(name, "length", f"must hold {low} to {high} items (got {len(items)})")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or key not in item:
            c.add(f"{name}[{i}]", "type", f"must be an object with a {key} field")
            continue
        for extra in sorted(set(item) - {key}):
            c.add(f"{name}[{i}].{extra}", "unknown_field", f"is not a field {name} accepts")
        _image_field(c, f"{name}[{i}].{key}", item[key])


def _optional_image(c: _Checker, name: str, *, required: bool = False) -> bool:
    if not c.present(name):
        if required:
            c.add(name, "required", "is required")
        return False
    _image_field(c, name, c.params[name])
    return True


def validate_expand_params(params: Mapping[str, Any]) -> list[FieldError]:
    """`POST /v1/images/editing/expand`: grow an image outwards by a ratio on each side."""
    c = _Checker(params)
    c.unknown(EXPAND_FIELDS, "the image-expand endpoint")
    _optional_image(c, "image", required=True)
    c.string("prompt", max_len=MAX_PROMPT)
    c.integer("n", 1, 9)
    c.url("callback_url")
    c.string("external_task_id")
    ratios = {}
    for side in EXPAND_SIDES:
        name = f"{side}_expansion_ratio"
        c.number(name, 0, MAX_EXPANSION_RATIO)
        value = params.get(name)
        ratios[side] = value if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
    area = (1 + ratios["left"] + ratios["right"]) * (1 + ratios["up"] + ratios["down"])
    if area > MAX_EXPANDED_AREA:
        c.add(
            "up_expansion_ratio",
            "expanded_area",
            f"the expanded image may be at most {MAX_EXPANDED_AREA:g}x the original's area (got {area:g}x)",
        )
    return c.errors


def validate_multi_image_params(params: Mapping[str, Any]) -> list[FieldError]:
    """`POST /v1/images/multi-image2image`: 1-4 subjects, an optional scene and style."""
    c = _Checker(params)
    c.unknown(MULTI_IMAGE_FIELDS, "the multi-image endpoint")
    c.choice("model_name", MULTI_IMAGE_MODELS)
    c.string("prompt", required=True, max_len=MAX_PROMPT)
    c.string("negative_prompt", max_len=MAX_PROMPT)
    _image_list(c, "subject_image_list", "subject_image", low=1, high=MAX_SUBJECT_IMAGES, required=True)
    _optional_image(c, "scene_image")
    _optional_image(c, "style_image")
    c.integer("n", 1, 9)
    c.choice("aspect_ratio", ALL_RATIOS)
    c.url("callback_url")
    c.string("external_task_id")
    return c.errors


def validate_try_on_params(params: Mapping[str, Any]) -> list[FieldError]:
    """`POST /v1/images/kolors-virtual-try-on`: a person and a garment."""
    c = _Checker(params)
    c.unknown(TRY_ON_FIELDS, "the virtual try-on endpoint")
    c.choice("model_name", TRY_ON_MODELS)
    _optional_image(c, "human_image", required=True)
    _optional_image(c, "cloth_image", required=True)
    c.url("callback_url")
    c.string("external_task_id")
    return c.errors


def _camera_control(c: _Checker) -> bool:
    value = c.params.get("camera_control")
    if value is None:
        return False
    if not isinstance(value, Mapping):
        c.add("camera_control", "type", "must be an object with type and config")
        return True
    for extra in sorted(set(value) - {"type", "config"}):
        c.add(f"camera_control.{extra}", "unknown_field", "is not a field camera_control accepts")
    kind = value.get("type")
    if kind not in CAMERA_TYPES:
        c.add("camera_control.type", "enum", f"must be one of {', '.join(CAMERA_TYPES)}")
    config = value.get("config")
    if kind == "simple" and not isinstance(config, Mapping):
        c.add("camera_control.config", "required", "is required when type is simple")
    if isinstance(config, Mapping):
        moves = [axis for axis in CAMERA_AXES if config.get(axis) not in (None, 0)]
        for name, amount in config.items():
            if name not in CAMERA_AXES:
                c.add(f"camera_control.config.{name}", "unknown_field", "is not a camera axis")
            elif isinstance(amount, bool) or not isinstance(amount, int | float) or not -10 <= amount <= 10:
                c.add(f"camera_control.config.{name}", "range", "must be a number between -10 and 10")
        if len(moves) > 1:
            c.add("camera_control.config", "one_axis", "only one axis may be non-zero")
    elif config is not None:
        c.add("camera_control.config", "type", "must be an object")
    return True


def _video_common(c: _Checker, *, prompt_required: bool) -> None:
    c.choice("model_name", VIDEO_MODELS)
    c.string("prompt", required=prompt_required, max_len=MAX_PROMPT)
    c.string("negative_prompt", max_len=MAX_PROMPT)
    c.number("cfg_scale", 0, 1)
    c.choice("mode", VIDEO_MODES)
    c.choice("sound", SOUND)
    c.url("callback_url")
    c.string("external_task_id")
    duration = c.params.get("duration")
    if duration is not None and str(duration) not in VIDEO_DURATIONS:
        c.add("duration", "enum", f"must be one of {', '.join(VIDEO_DURATIONS)} (seconds, as a string)")


def validate_text_to_video_params(params: Mapping[str, Any]) -> list[FieldError]:
    """`POST /v1/videos/text2video`."""
    c = _Checker(params)
    c.unknown(TEXT_TO_VIDEO_FIELDS, "the text-to-video endpoint")
    _video_common(c, prompt_required=True)
    c.choice("aspect_ratio", VIDEO_RATIOS)
    _camera_control(c)
    return c.errors


def validate_image_to_video_params(params: Mapping[str, Any]) -> list[FieldError]:
    """`POST /v1/videos/image2video`: a start frame and/or an end frame, and at most one control."""
    c = _Checker(params)
    c.unknown(IMAGE_TO_VIDEO_FIELDS, "the image-to-video endpoint")
    _video_common(c, prompt_required=False)
    has_image = _optional_image(c, "image")
    has_tail = _optional_image(c, "image_tail")
    if not (has_image or has_tail):
        c.add("image", "required", "is required (or image_tail)")
    has_masks = _optional_image(c, "static_mask") | _dynamic_masks(c)
    has_camera = _camera_control(c)
    # The reference: image_tail, masks and camera_control cannot be combined.
    controls = [
        n for n, on in (("image_tail", has_tail), ("masks", has_masks), ("camera_control", has_camera)) if on
    ]
    if len(controls) > 1:
        c.add(controls[1], "exclusive", f"cannot be combined with {controls[0]}")
    return c.errors


def _dynamic_masks(c: _Checker) -> bool:
    masks = c.params.get("dynamic_masks")
    if masks is None:
        return False
    if not isinstance(masks, list) or not 1 <= len(masks) <= 6:
        c.add("dynamic_masks", "type", "must be a list of 1 to 6 {mask, trajectories} objects")
        return True
    for i, item in enumerate(masks):
        if not isinstance(item, Mapping) or "mask" not in item:
            c.add(f"dynamic_masks[{i}]", "type", "must be an object with mask and trajectories")
            continue
        _image_field(c, f"dynamic_masks[{i}].mask", item["mask"])
        points = item.get("trajectories")
        if not isinstance(points, list) or not 2 <= len(points) <= 77:
            c.add(f"dynamic_masks[{i}].trajectories", "length", "must be a list of 2 to 77 {x, y} points")
    return True


def validate_omni_video_params(params: Mapping[str, Any]) -> list[FieldError]:
    """`POST /v1/videos/omni-video`: prompt (or multi_prompt), frames, reference videos, 3-15 s."""
    c = _Checker(params)
    c.unknown(OMNI_VIDEO_FIELDS, "the omni-video endpoint")
    c.choice("model_name", OMNI_VIDEO_MODELS)
    multi = params.get("multi_prompt")
    c.string("prompt", required=multi is None, max_len=MAX_PROMPT)
    c.choice("mode", VIDEO_MODES)
    c.choice("aspect_ratio", VIDEO_RATIOS)
    c.choice("sound", SOUND)
    c.url("callback_url")
    c.string("external_task_id")
    duration = params.get("duration")
    if duration is not None:
        seconds = int(duration) if isinstance(duration, str) and duration.isdigit() else duration
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            c.add("duration", "type", "must be a whole number of seconds")
        elif not OMNI_VIDEO_MIN_SECONDS <= seconds <= OMNI_VIDEO_MAX_SECONDS:
            c.add(
                "duration",
                "range",
                f"must be between {OMNI_VIDEO_MIN_SECONDS} and {OMNI_VIDEO_MAX_SECONDS} (got {seconds})",
            )
    references = 0
    images = params.get("image_list")
    if images is not None:
        if not isinstance(images, list):
            c.add("image_list", "type", "must be a list of {'image_url': ..., 'type': ...} objects")
        else:
            references += len(images)
            for i, item in enumerate(images):
                if not isinstance(item, Mapping) or "image_url" not in item:
                    c.add(f"image_list[{i}]", "type", "must be an object with an image_url field")
                    continue
                _image_field(c, f"image_list[{i}].image_url", item["image_url"])
                if item.get("type") is not None and item.get("type") not in OMNI_VIDEO_FRAME_TYPES:
                    c.add(
                        f"image_list[{i}].type", "enum", f"must be one of {', '.join(OMNI_VIDEO_FRAME_TYPES)}"
                    )
    for name in ("video_list", "element_list"):
        value = params.get(name)
        if value is not None:
            if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
                c.add(name, "type", "must be a list of objects")
            else:
                references += len(value)
    if references > MAX_OMNI_VIDEO_REFERENCES:
        c.add(
            "image_list",
            "max_references",
            f"image_list, video_list and element_list hold at most "
            f"{MAX_OMNI_VIDEO_REFERENCES} references in all (got {references})",
        )
    if multi is not None:
        if not isinstance(multi, list) or not multi:
            c.add("multi_prompt", "type", "must be a non-empty list of {prompt, duration} objects")
        else:
            for i, shot in enumerate(multi):
                if (
                    not isinstance(shot, Mapping)
                    or not isinstance(shot.get("prompt"), str)
                    or not shot["prompt"]
                ):
                    c.add(f"multi_prompt[{i}].prompt", "required", "is required")
    return c.errors
