"""Request validation, run before any network call.

The rules come from kling-docs/002 (image generation), KLING_NOTES.md (models, omni image) and
kling-docs/003 (the Appy Pie gateway). `validate_image_params` and `validate_omni_params` work on
the raw wire JSON so the simulator and the job HTTP API can reuse them without building requests;
`ImageRequest` and `OmniImageRequest` run them on construction.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from kling.errors import FieldError, ValidationError

Provider = Literal["kling", "appypie"]

ALL_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
GATEWAY_RATIOS = ALL_RATIOS[:7]
OMNI_RATIOS = (*ALL_RATIOS, "auto")
IMAGE_REFERENCES = ("subject", "face")
MAX_PROMPT = 2500
MAX_GATEWAY_PROMPT = 500
MAX_GATEWAY_NEGATIVE_PROMPT = 200
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
MAX_IMAGE_ASPECT = 2.5
IMAGE_FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True)
class ModelCapability:
    ratios: tuple[str, ...]
    resolutions: tuple[str, ...]
    image_reference: bool = False
    # kling-v1-5 refuses an image without saying how to use it.
    image_reference_required_with_image: bool = False
    # Reported live: kling-v2-1 answers 1201 to `resolution: 2k` together with `image`.
    no_2k_with_image: bool = False


# Seed 002 and the notes' capability map. Where the docs give no per-model list, a model gets
# the full enum, so we never refuse what the provider might accept.
MODEL_CAPABILITIES: dict[str, ModelCapability] = {
    "kling-v1": ModelCapability(ratios=ALL_RATIOS, resolutions=("1k",)),
    "kling-v1-5": ModelCapability(
        ratios=ALL_RATIOS,
        resolutions=("1k",),
        image_reference=True,
        image_reference_required_with_image=True,
    ),
    "kling-v2": ModelCapability(ratios=ALL_RATIOS, resolutions=("1k", "2k")),
    "kling-v2-new": ModelCapability(ratios=ALL_RATIOS, resolutions=("1k", "2k")),
    "kling-v2-1": ModelCapability(
        ratios=ALL_RATIOS, resolutions=("1k", "2k"), image_reference=True, no_2k_with_image=True
    ),
    "kling-v3": ModelCapability(ratios=ALL_RATIOS, resolutions=("1k", "2k")),
}
# Without `model_name` the provider picks its default (kling-v1 in seed 002, kling-v3 in the
# notes): allow what either allows, and nothing model-specific.
DEFAULT_CAPABILITY = ModelCapability(ratios=ALL_RATIOS, resolutions=("1k", "2k"))

OMNI_MODELS = ("kling-image-o1", "kling-v3-omni")
OMNI_RESOLUTIONS = ("1k", "2k", "4k")
OMNI_RESULT_TYPES = ("single", "series")

KLING_FIELDS = frozenset(
    {
        "model_name",
        "prompt",
        "negative_prompt",
        "image",
        "image_reference",
        "image_fidelity",
        "human_fidelity",
        "resolution",
        "n",
        "aspect_ratio",
        "callback_url",
        "external_task_id",
    }
)
GATEWAY_FIELDS = frozenset({"prompt", "negative_prompt", "image", "image_fidelity", "n", "aspect_ratio"}) | {
    "callback_url"
}
OMNI_FIELDS = frozenset(
    {
        "model_name",
        "prompt",
        "image_list",
        "resolution",
        "result_type",
        "series_amount",
        "n",
        "aspect_ratio",
        "callback_url",
        "external_task_id",
    }
)


class _Checker:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        self.errors: list[FieldError] = []

    def add(self, name: str, rule: str, message: str) -> None:
        self.errors.append(FieldError(name, rule, message))

    def present(self, name: str) -> bool:
        return self.params.get(name) is not None

    def unknown(self, allowed: frozenset[str], where: str) -> None:
        for name in sorted(set(self.params) - allowed):
            self.add(name, "unknown_field", f"is not a field {where} accepts")

    def string(self, name: str, *, required: bool = False, max_len: int | None = None) -> str | None:
        value = self.params.get(name)
        if value is None:
            if required:
                self.add(name, "required", "is required")
            return None
        if not isinstance(value, str):
            self.add(name, "type", "must be a string")
            return None
        if required and not value.strip():
            self.add(name, "required", "must not be empty")
            return None
        if max_len is not None and len(value) > max_len:
            self.add(name, "max_length", f"must be at most {max_len} characters (got {len(value)})")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], what: str = "") -> str | None:
        value = self.string(name)
        if value is not None and value not in allowed:
            self.add(name, "enum", f"must be one of {', '.join(allowed)}{what} (got {value!r})")
            return None
        return value

    def number(self, name: str, low: float, high: float) -> None:
        value = self.params.get(name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(name, "type", "must be a number")
        elif not low <= value <= high:
            self.add(name, "range", f"must be between {low:g} and {high:g} (got {value!r})")

    def integer(self, name: str, low: int, high: int) -> None:
        value = self.params.get(name)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(name, "type", "must be an integer")
        elif not low <= value <= high:
            self.add(name, "range", f"must be between {low} and {high} (got {value})")

    def url(self, name: str) -> None:
        value = self.string(name)
        if value is not None and not _is_http_url(value):
            self.add(name, "url", "must be an http(s) URL")


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_image(value: str) -> list[tuple[str, str]]:
    """Problems with an `image` value as `(rule, message)` pairs: URL, or bare base64 jpg/png."""
    if value.startswith(("http://", "https://")):
        return [] if _is_http_url(value) else [("url", "is not a valid http(s) URL")]
    if value[:5].lower() == "data:":
        return [
            (
                "base64_prefix",
                "must be bare base64: strip the 'data:...;base64,' prefix and send only the encoded part",
            )
        ]
    if "://" in value:
        return [("url", "must be an http(s) URL or bare base64")]
    # Compare the decoded size before decoding so a huge string is refused cheaply.
    if len(value) * 3 // 4 - value[-2:].count("=") > MAX_IMAGE_BYTES:
        return [("image_size", f"must be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB once decoded")]
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return [("base64", "is neither an http(s) URL nor valid base64")]
    if len(raw) > MAX_IMAGE_BYTES:
        return [("image_size", f"must be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB once decoded")]
    try:
        with Image.open(io.BytesIO(raw)) as img:
            fmt, (width, height) = img.format, img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return [("image_format", "is not a readable image (jpg or png expected)")]
    problems: list[tuple[str, str]] = []
    if fmt not in IMAGE_FORMATS:
        problems.append(("image_format", f"must be jpg or png (got {fmt or 'unknown'})"))
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        problems.append(
            (
                "image_dimensions",
                f"width and height must be at least {MIN_IMAGE_SIDE} px (got {width}x{height})",
            )
        )
    if not 1 / MAX_IMAGE_ASPECT <= width / max(height, 1) <= MAX_IMAGE_ASPECT:
        problems.append(
            ("image_aspect", f"aspect ratio must be between 1:2.5 and 2.5:1 (got {width}x{height})")
        )
    return problems


def _image_field(c: _Checker, name: str, value: object) -> bool:
    """Check one image value; True when it is usable."""
    if not isinstance(value, str):
        c.add(name, "type", "must be a string (http(s) URL or bare base64)")
        return False
    if not value:
        c.add(name, "required", "must not be empty")
        return False
    problems = check_image(value)
    for rule, message in problems:
        c.add(name, rule, message)
    return not problems


def validate_image_params(params: Mapping[str, Any], *, provider: Provider = "kling") -> list[FieldError]:
    """Every problem with an image-generation request body (wire JSON); empty when it is valid."""
    c = _Checker(params)
    gateway = provider == "appypie"
    c.unknown(GATEWAY_FIELDS if gateway else KLING_FIELDS, "the Appy Pie gateway" if gateway else "Kling")

    c.string("prompt", required=True, max_len=MAX_GATEWAY_PROMPT if gateway else MAX_PROMPT)
    negative = c.string("negative_prompt", max_len=MAX_GATEWAY_NEGATIVE_PROMPT if gateway else MAX_PROMPT)
    has_image = c.present("image")
    if has_image:
        _image_field(c, "image", params["image"])
    if negative and has_image:
        c.add("negative_prompt", "forbidden_with_image", "is not supported when image is given")
    c.number("image_fidelity", 0, 1)
    c.integer("n", 1, 9)
    c.url("callback_url")
    c.string("external_task_id")

    if gateway:
        c.choice("aspect_ratio", GATEWAY_RATIOS, " on the Appy Pie gateway")
        return c.errors

    model = c.choice("model_name", tuple(MODEL_CAPABILITIES))
    cap = MODEL_CAPABILITIES.get(model or "", DEFAULT_CAPABILITY)
    on_model = f" on {model}" if model else ""
    ratio = c.choice("aspect_ratio", ALL_RATIOS)
    if ratio and ratio not in cap.ratios:
        c.add("aspect_ratio", "model_support", f"must be one of {', '.join(cap.ratios)}{on_model}")
    resolution = c.choice("resolution", ("1k", "2k"))
    if resolution and resolution not in cap.resolutions:
        c.add("resolution", "model_support", f"must be one of {', '.join(cap.resolutions)}{on_model}")
    if resolution == "2k" and has_image and cap.no_2k_with_image:
        c.add("resolution", "model_support", f"2k is not supported together with image{on_model}")

    reference = c.choice("image_reference", IMAGE_REFERENCES)
    if c.present("image_reference") and not cap.image_reference:
        supported = ", ".join(m for m, cp in MODEL_CAPABILITIES.items() if cp.image_reference)
        c.add("image_reference", "model_support", f"is only supported by {supported}")
    if c.present("image_reference") and not has_image:
        c.add("image", "required_with_image_reference", "is required when image_reference is given")
    if has_image and cap.image_reference_required_with_image and not c.present("image_reference"):
        c.add("image_reference", "required_with_image", f"is required when image is given{on_model}")

    c.number("human_fidelity", 0, 1)
    if c.present("human_fidelity") and reference != "subject":
        c.add("human_fidelity", "requires_subject_reference", "is only allowed with image_reference=subject")
    return c.errors


def validate_omni_params(params: Mapping[str, Any]) -> list[FieldError]:
    """Every problem with an omni-image request body (wire JSON); empty when it is valid."""
    c = _Checker(params)
    c.unknown(OMNI_FIELDS, "the omni-image endpoint")
    c.choice("model_name", OMNI_MODELS)
    c.string("prompt", required=True, max_len=MAX_PROMPT)
    c.choice("resolution", OMNI_RESOLUTIONS)
    c.choice("aspect_ratio", OMNI_RATIOS)
    c.integer("n", 1, 9)
    c.url("callback_url")
    c.string("external_task_id")
    result_type = c.choice("result_type", OMNI_RESULT_TYPES)

    amount = params.get("series_amount")
    if amount is not None:
        if amount != "auto" and (isinstance(amount, bool) or not isinstance(amount, int)):
            c.add("series_amount", "type", "must be an integer or 'auto'")
        elif isinstance(amount, int) and not 2 <= amount <= 9:
            c.add("series_amount", "range", f"must be between 2 and 9 or 'auto' (got {amount})")
        if result_type != "series":
            c.add("series_amount", "requires_series", "is only allowed with result_type=series")

    images = params.get("image_list")
    if images is not None:
        if not isinstance(images, list):
            c.add("image_list", "type", "must be a list of {'image': ...} objects")
        else:
            for i, item in enumerate(images):
                name = f"image_list[{i}].image"
                if not isinstance(item, Mapping) or "image" not in item:
                    c.add(f"image_list[{i}]", "type", "must be an object with an image field")
                    continue
                for extra in sorted(set(item) - {"image"}):
                    c.add(f"image_list[{i}].{extra}", "unknown_field", "is not a field image_list accepts")
                _image_field(c, name, item["image"])
    return c.errors


def _body(obj: object) -> dict[str, Any]:
    return {k: v for k, v in asdict(obj).items() if v is not None}  # type: ignore[call-overload]


@dataclass(frozen=True)
class ImageRequest:
    """An image-generation request, valid for the official API by construction.

    Raises `ValidationError` naming every bad field and its rule.
    """

    prompt: str
    negative_prompt: str | None = None
    model_name: str | None = None
    image: str | None = field(default=None, repr=False)
    image_reference: str | None = None
    image_fidelity: float | None = None
    human_fidelity: float | None = None
    resolution: str | None = None
    n: int | None = None
    aspect_ratio: str | None = None

    def __post_init__(self) -> None:
        errors = validate_image_params(self.to_body())
        if errors:
            raise ValidationError(errors)

    def to_body(self) -> dict[str, Any]:
        """The wire JSON, without the fields left unset."""
        return _body(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ImageRequest:
        """Build from raw JSON, reporting unknown fields and wrong types as `ValidationError`."""
        errors = validate_image_params(params)
        if errors:
            raise ValidationError(errors)
        return cls(**{k: v for k, v in params.items() if k not in ("callback_url", "external_task_id")})


@dataclass(frozen=True)
class OmniImageRequest:
    """An omni-image request (`POST /v1/images/omni-image`); `image_list` holds the images."""

    prompt: str
    model_name: str | None = None
    image_list: Sequence[str] = field(default=(), repr=False)
    resolution: str | None = None
    result_type: str | None = None
    series_amount: int | str | None = None
    n: int | None = None
    aspect_ratio: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_list, list):
            # Callers naturally pass a list; keep the frozen object hashable.
            object.__setattr__(self, "image_list", tuple(self.image_list))
        errors = validate_omni_params(self.to_body())
        if errors:
            raise ValidationError(errors)

    def to_body(self) -> dict[str, Any]:
        body = _body(self)
        images = body.pop("image_list", ())
        if not isinstance(images, list | tuple):
            body["image_list"] = images  # let validation report the wrong type
        elif images:
            body["image_list"] = [{"image": img} for img in images]
        return body
