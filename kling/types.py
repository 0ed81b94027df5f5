"""The normalized task type every provider client and the callback parser return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from kling.errors import UnexpectedResponseError
from kling.failures import FailureReason, failure_reason


class TaskStatus(StrEnum):
    """Provider task status, normalized: Kling's `succeed` becomes `succeeded`."""

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)

    @classmethod
    def parse(cls, value: object) -> TaskStatus:
        # Kling spells it `succeed`; the newer callback standard spells it `succeeded`.
        aliases = {"succeed": cls.SUCCEEDED, "success": cls.SUCCEEDED}
        if isinstance(value, str):
            v = value.strip().lower()
            if v in aliases:
                return aliases[v]
            try:
                return cls(v)
            except ValueError:
                pass
        raise UnexpectedResponseError(f"unknown task status {value!r}")


@dataclass(frozen=True)
class TaskImage:
    index: int
    url: str
    watermark_url: str | None = None


@dataclass(frozen=True)
class Output:
    """One thing a task made, whatever its kind: an image or a video.

    `url` is the best copy there is: the raw file, or the watermarked one when a report carries
    only `watermark_url` (`watermark_only` says so), so such a report never reads as "no output".
    """

    type: Literal["image", "video"]
    index: int
    url: str
    watermark_url: str | None = None
    duration: float | None = None  # seconds, videos only
    id: str | None = None  # the provider's video id
    watermark_only: bool = False


@dataclass(frozen=True)
class Task:
    task_id: str
    status: TaskStatus
    status_message: str = ""
    external_task_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    images: tuple[TaskImage, ...] = ()
    series_images: tuple[TaskImage, ...] = ()
    # Units the task cost (`final_unit_deduction`); None until final, or when unreadable.
    units: float | None = None
    # Every image and video, in order; `images` above keeps the image-only view callers know.
    outputs: tuple[Output, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def failure_reason(self) -> FailureReason | None:
        """`content_policy`, `timeout`, `internal` or `other` for a failed task; None otherwise."""
        return failure_reason(self.status_message) if self.status == TaskStatus.FAILED else None

    @classmethod
    def from_kling(cls, data: object) -> Task:
        """Build from Kling's task object (query, list, create answer, legacy callback body)."""
        if not isinstance(data, Mapping):
            raise UnexpectedResponseError(f"expected a task object, got {type(data).__name__}")
        task_id = _task_id(data.get("task_id"), "task_id")
        info = data.get("task_info") or {}
        if not isinstance(info, Mapping):
            raise UnexpectedResponseError("task_info is not an object")
        ext = info.get("external_task_id")
        result = data.get("task_result") or {}
        if not isinstance(result, Mapping):
            raise UnexpectedResponseError("task_result is not an object")
        images = _images(result.get("images"))
        series = _images(result.get("series_images"), "task_result.series_images")
        return cls(
            task_id=task_id,
            status=TaskStatus.parse(data.get("task_status")),
            status_message=_message(data.get("task_status_msg"), "task_status_msg"),
            external_task_id=_external_id(ext, "task_info.external_task_id"),
            created_at=ms_to_datetime(data.get("created_at")),
            updated_at=ms_to_datetime(data.get("updated_at")),
            images=images,
            series_images=series,
            units=parse_units(data.get("final_unit_deduction")),
            outputs=_legacy_outputs(images + series, result.get("videos")),
            raw=dict(data),
        )

    @classmethod
    def from_standard(cls, data: Mapping[str, Any]) -> Task:
        """Build from the newer callback standard: `{id, status, message, outputs[...]}`."""
        task_id = _task_id(data.get("id"), "id")
        outputs = _standard_outputs(data.get("outputs"))
        images = tuple(TaskImage(o.index, o.url, o.watermark_url) for o in outputs if o.type == "image")
        return cls(
            task_id=task_id,
            status=TaskStatus.parse(data.get("status")),
            status_message=_message(data.get("message"), "message"),
            external_task_id=_external_id(data.get("external_id"), "external_id"),
            created_at=ms_to_datetime(data.get("create_time")),
            updated_at=ms_to_datetime(data.get("update_time")),
            images=images,
            units=_standard_units(data),
            outputs=outputs,
            raw=dict(data),
        )


def parse_units(value: object) -> float | None:
    """Units from `final_unit_deduction` (Kling sends a string like "2"); None when absent or not
    a finite non-negative number: a bad count must never fail the task it came with."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 32:
            return None
        try:
            number = float(text)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _standard_units(data: Mapping[str, Any]) -> float | None:
    # The newer shape may carry `final_unit_deduction` too; otherwise sum its `billing[]` unit lines.
    units = parse_units(data.get("final_unit_deduction"))
    if units is not None:
        return units
    billing = data.get("billing")
    if not isinstance(billing, list):
        return None
    amounts = [
        parse_units(line.get("amount"))
        for line in billing
        if isinstance(line, Mapping) and line.get("charge_type") == "unit"
    ]
    known = [a for a in amounts if a is not None]
    return sum(known) if known else None


def _images(value: object, where: str = "task_result.images") -> tuple[TaskImage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UnexpectedResponseError(f"{where} is not a list")
    out = []
    for pos, img in enumerate(value):
        if not isinstance(img, Mapping):
            raise UnexpectedResponseError(f"{where}[{pos}] is not an object")
        url, watermark, _ = _urls(img, f"{where}[{pos}]")
        index = img.get("index", pos)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_IMAGE_INDEX:
            raise UnexpectedResponseError(f"{where}[{pos}].index is not an integer 0-{MAX_IMAGE_INDEX}")
        out.append(TaskImage(index=index, url=url, watermark_url=watermark))
    return tuple(out)


def _urls(item: Mapping[str, Any], where: str) -> tuple[str, str | None, bool]:
    """(best url, watermark url, watermark only): a report with only `watermark_url` still counts."""
    watermark = _optional_url(item.get("watermark_url"), f"{where}.watermark_url")
    raw = item.get("url")
    if (raw is None or raw == "") and watermark is not None:
        return watermark, watermark, True
    return _url(raw, where), watermark, False


def _legacy_outputs(images: tuple[TaskImage, ...], videos: object) -> tuple[Output, ...]:
    """Images (plain, then series) and `task_result.videos[{id, url, duration}]`, indexes unique."""
    if len(images) > MAX_IMAGE_INDEX + 1:
        # Also bounds the renumbering below, which walks past indexes already taken.
        raise UnexpectedResponseError("too many outputs")
    out: list[Output] = []
    used: set[int] = set()

    def free(index: int) -> int:
        # An omni task may number its images and its series from 0 alike; keep keys distinct.
        while index in used:
            index += 1
        used.add(index)
        return index

    for img in images:
        wm_only = img.url == img.watermark_url
        out.append(Output("image", free(img.index), img.url, img.watermark_url, watermark_only=wm_only))
    if videos is None:
        return tuple(out)
    if not isinstance(videos, list):
        raise UnexpectedResponseError("task_result.videos is not a list")
    if len(images) + len(videos) > MAX_IMAGE_INDEX + 1:
        raise UnexpectedResponseError("too many outputs")
    for pos, video in enumerate(videos):
        where = f"task_result.videos[{pos}]"
        if not isinstance(video, Mapping):
            raise UnexpectedResponseError(f"{where} is not an object")
        url, watermark, wm_only = _urls(video, where)
        video_id = video.get("id")
        out.append(
            Output(
                "video",
                free(pos),
                url,
                watermark,
                duration=_seconds(video.get("duration")),
                id=video_id if isinstance(video_id, str) and _is_text(video_id) else None,
                watermark_only=wm_only,
            )
        )
    return tuple(out)


def _standard_outputs(value: object) -> tuple[Output, ...]:
    """The 3.0 shape's `outputs[{type, url, watermark_url, duration}]`; index = position."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UnexpectedResponseError("outputs is not a list")
    if len(value) > MAX_IMAGE_INDEX + 1:
        raise UnexpectedResponseError("too many outputs")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise UnexpectedResponseError(f"outputs[{i}] is not an object")
        if item.get("type") not in (None, "image", "video"):
            continue  # a type we do not archive (audio, ...) must not fail the task
        url, watermark, wm_only = _urls(item, f"outputs[{i}]")
        kind: Literal["image", "video"] = "video" if item.get("type") == "video" else "image"
        duration = _seconds(item.get("duration")) if kind == "video" else None
        out.append(Output(kind, i, url, watermark, duration=duration, watermark_only=wm_only))
    return tuple(out)


def _seconds(value: object) -> float | None:
    # Kling sends a video's duration as a string ("5.1"); a bad one must not fail the task.
    return parse_units(value)


# Bounds on what a report may carry: past them it is not Kling's (ids and indexes are small).
MAX_TASK_ID = 128
MAX_IMAGE_INDEX = 999
MAX_URL = 8192
_LAST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


def ms_to_datetime(value: object) -> datetime | None:
    """Kling timestamps are Unix milliseconds."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        value = int(value)
    if isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= _LAST_MS:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    raise UnexpectedResponseError(f"bad timestamp {str(value)[:40]!r}")


def _task_id(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise UnexpectedResponseError(f"{name} is missing")
    if len(value) > MAX_TASK_ID or not value.isprintable():
        raise UnexpectedResponseError(
            f"{name} is not a task id (printable, at most {MAX_TASK_ID} characters)"
        )
    return value


def _external_id(value: object, name: str) -> str | None:
    # Ours are job ids (UUIDs); any other text can never match a job and is dropped.
    if value is None:
        return None
    if not isinstance(value, str) or not _is_text(value):
        raise UnexpectedResponseError(f"{name} is not text")
    return value if value and len(value) <= MAX_TASK_ID else None


def _url(value: object, name: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_URL
        or "\x00" in value
        or not _is_text(value)
    ):
        raise UnexpectedResponseError(f"{name} has no usable url")
    return value


def _optional_url(value: object, name: str) -> str | None:
    return None if value is None or value == "" else _url(value, name)


def _message(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _is_text(value):
        raise UnexpectedResponseError(f"{name} is not text")
    return value.replace("\x00", "")[:2000]


def _is_text(value: str) -> bool:
    # A JSON escape like \ud800 decodes to a lone surrogate, which UTF-8 (and PostgreSQL) cannot hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- account usage (`GET /account/costs`) -----------------------------------------------------


@dataclass(frozen=True)
class ResourcePack:
    """One entry of `data.resource_pack_subscribe_infos`; unreadable fields become None."""

    name: str
    id: str
    type: str  # decreasing_total | constant_period
    total_quantity: float | None
    remaining_quantity: float | None  # may lag the real balance by hours
    status: str  # toBeOnline | online | expired | runOut
    purchase_time: datetime | None = None
    effective_time: datetime | None = None
    invalid_time: datetime | None = None

    @classmethod
    def from_kling(cls, data: object) -> ResourcePack:
        if not isinstance(data, Mapping):
            raise UnexpectedResponseError("resource pack is not an object")
        return cls(
            name=_text(data.get("resource_pack_name")),
            id=_text(data.get("resource_pack_id")),
            type=_text(data.get("resource_pack_type")),
            total_quantity=parse_units(data.get("total_quantity")),
            remaining_quantity=parse_units(data.get("remaining_quantity")),
            status=_text(data.get("status")),
            purchase_time=_lenient_time(data.get("purchase_time")),
            effective_time=_lenient_time(data.get("effective_time")),
            invalid_time=_lenient_time(data.get("invalid_time")),
        )


@dataclass(frozen=True)
class AccountCosts:
    """The account's resource packs, as `GET /account/costs` reports them."""

    packs: tuple[ResourcePack, ...] = ()

    @property
    def remaining_online(self) -> float | None:
        """Units left in `online` packs (expired, run-out and not-yet-online ones count nothing);
        None when the answer listed no pack at all, so the caller cannot tell."""
        if not self.packs:
            return None
        return sum(p.remaining_quantity or 0.0 for p in self.packs if p.status == "online")

    @classmethod
    def from_kling(cls, data: object) -> AccountCosts:
        """Build from the `data` of the answer: `{"resource_pack_subscribe_infos": [...]}`."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise UnexpectedResponseError("account costs data is not an object")
        infos = data.get("resource_pack_subscribe_infos")
        if infos is None:
            return cls()
        if not isinstance(infos, list):
            raise UnexpectedResponseError("resource_pack_subscribe_infos is not a list")
        return cls(packs=tuple(ResourcePack.from_kling(p) for p in infos))


def _text(value: object) -> str:
    if isinstance(value, str) and _is_text(value):
        return value[:256]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def _lenient_time(value: object) -> datetime | None:
    try:
        return ms_to_datetime(value)
    except UnexpectedResponseError:
        return None
