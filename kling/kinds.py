"""The task-kind registry: every Kling task kind the SDK, the simulator and the service know.

Adding a kind = one `TaskKind` entry in `KINDS` + its validation (`kling.kind_rules`) + a
simulator handler (the simulator serves every registered path from this table).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from kling import kind_rules as rules
from kling.errors import FieldError, ValidationError
from kling.validation import Provider, validate_image_params, validate_omni_params

Yields = Literal["image", "video"]
Validator = Callable[[Mapping[str, Any], Provider], list[FieldError]]

DEFAULT_KIND = "image"
# Omni image `series_amount: auto` lets the provider pick up to 9; count the most it may hold.
AUTO_SERIES_SLOTS = 9
# What the simulator makes for an auto series (any 2-9 is faithful; 4 keeps tests small).
AUTO_SERIES_IMAGES = 4


def _count(value: object, default: int = 1) -> int:
    """A positive integer from params that may not have been validated yet."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _n(params: Mapping[str, Any]) -> int:
    return _count(params.get("n"))


def _one(params: Mapping[str, Any]) -> int:
    return 1


def _omni_series(params: Mapping[str, Any]) -> bool:
    return params.get("result_type") == "series"


def _omni_slots(params: Mapping[str, Any]) -> int:
    if not _omni_series(params):
        return _n(params)
    return _count(params.get("series_amount"), AUTO_SERIES_SLOTS)


def _omni_outputs(params: Mapping[str, Any]) -> int:
    if not _omni_series(params):
        return _n(params)
    return _count(params.get("series_amount"), AUTO_SERIES_IMAGES)


def _kling_only(check: Callable[[Mapping[str, Any]], list[FieldError]]) -> Validator:
    def validate(params: Mapping[str, Any], provider: Provider) -> list[FieldError]:
        return check(params)

    return validate


@dataclass(frozen=True)
class TaskKind:
    """One task kind: where it lives, what it accepts, what it costs in slots, what it yields."""

    name: str
    # Create with POST, list with GET, query with GET {path}/{task_id or external_task_id}.
    path: str
    yields: Yields
    _validate: Validator
    _slots: Callable[[Mapping[str, Any]], int]
    _outputs: Callable[[Mapping[str, Any]], int] = _one
    # Providers that offer this kind; the Appy Pie gateway has image generation only.
    providers: tuple[Provider, ...] = ("kling",)

    @property
    def create_path(self) -> str:
        return self.path

    @property
    def list_path(self) -> str:
        return self.path

    def query_path(self, ident: str) -> str:
        """`{path}/{id}`; the caller quotes `ident`."""
        return f"{self.path}/{ident}"

    def validate(self, params: Mapping[str, Any], provider: Provider = "kling") -> list[FieldError]:
        """Every problem with a create body (wire JSON) for `provider`; empty when it is valid."""
        if provider not in self.providers:
            return [
                FieldError(
                    "kind", "provider_support", f"{self.name} is not offered by the {provider} provider"
                )
            ]
        return self._validate(params, provider)

    def slots(self, params: Mapping[str, Any]) -> int:
        """Concurrency slots a task of these params holds at the provider until it ends."""
        return self._slots(params)

    def output_count(self, params: Mapping[str, Any]) -> int:
        """How many outputs a task of these params yields (the simulator makes this many)."""
        return self._outputs(params)


_ENTRIES = (
    TaskKind(
        "image",
        "/v1/images/generations",
        "image",
        lambda params, provider: validate_image_params(params, provider=provider),
        _n,
        _n,
        providers=("kling", "appypie"),
    ),
    TaskKind(
        "omni_image",
        "/v1/images/omni-image",
        "image",
        _kling_only(validate_omni_params),
        _omni_slots,
        _omni_outputs,
    ),
    TaskKind(
        "expand", "/v1/images/editing/expand", "image", _kling_only(rules.validate_expand_params), _n, _n
    ),
    TaskKind(
        "multi_image",
        "/v1/images/multi-image2image",
        "image",
        _kling_only(rules.validate_multi_image_params),
        _n,
        _n,
    ),
    TaskKind(
        "try_on",
        "/v1/images/kolors-virtual-try-on",
        "image",
        _kling_only(rules.validate_try_on_params),
        _one,
    ),
    TaskKind(
        "text_to_video",
        "/v1/videos/text2video",
        "video",
        _kling_only(rules.validate_text_to_video_params),
        _one,
    ),
    TaskKind(
        "image_to_video",
        "/v1/videos/image2video",
        "video",
        _kling_only(rules.validate_image_to_video_params),
        _one,
    ),
    TaskKind(
        "omni_video",
        "/v1/videos/omni-video",
        "video",
        _kling_only(rules.validate_omni_video_params),
        _one,
    ),
)

KINDS: Mapping[str, TaskKind] = MappingProxyType({k.name: k for k in _ENTRIES})
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def kind_for(name: object) -> TaskKind:
    """The registered kind called `name`; anything else raises a `ValidationError` on `kind`."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValidationError([FieldError("kind", "enum", f"must be one of {', '.join(KIND_NAMES)}")])
    return kind
