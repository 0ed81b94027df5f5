"""The normalized task type every provider client and the callback parser return."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kling.errors import UnexpectedResponseError


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
class Task:
    task_id: str
    status: TaskStatus
    status_message: str = ""
    external_task_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    images: tuple[TaskImage, ...] = ()
    series_images: tuple[TaskImage, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

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
        return cls(
            task_id=task_id,
            status=TaskStatus.parse(data.get("task_status")),
            status_message=_message(data.get("task_status_msg"), "task_status_msg"),
            external_task_id=_external_id(ext, "task_info.external_task_id"),
            created_at=ms_to_datetime(data.get("created_at")),
            updated_at=ms_to_datetime(data.get("updated_at")),
            images=_images(result.get("images")),
            series_images=_images(result.get("series_images")),
            raw=dict(data),
        )

    @classmethod
    def from_standard(cls, data: Mapping[str, Any]) -> Task:
        """Build from the newer callback standard: `{id, status, message, outputs[...]}`."""
        task_id = _task_id(data.get("id"), "id")
        outputs = data.get("outputs") or []
        if not isinstance(outputs, list):
            raise UnexpectedResponseError("outputs is not a list")
        images = []
        for i, out in enumerate(outputs):
            if not isinstance(out, Mapping):
                raise UnexpectedResponseError(f"outputs[{i}] is not an object")
            url = _url(out.get("url"), f"outputs[{i}]")
            if out.get("type") not in (None, "image"):
                continue
            if i > MAX_IMAGE_INDEX:
                raise UnexpectedResponseError("too many outputs")
            watermark = _optional_url(out.get("watermark_url"), f"outputs[{i}].watermark_url")
            images.append(TaskImage(index=i, url=url, watermark_url=watermark))
        return cls(
            task_id=task_id,
            status=TaskStatus.parse(data.get("status")),
            status_message=_message(data.get("message"), "message"),
            external_task_id=_external_id(data.get("external_id"), "external_id"),
            created_at=ms_to_datetime(data.get("create_time")),
            updated_at=ms_to_datetime(data.get("update_time")),
            images=tuple(images),
            raw=dict(data),
        )


def _images(value: object) -> tuple[TaskImage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UnexpectedResponseError("task_result.images is not a list")
    out = []
    for pos, img in enumerate(value):
        if not isinstance(img, Mapping):
            raise UnexpectedResponseError(f"task_result.images[{pos}] is not an object")
        url = _url(img.get("url"), f"task_result.images[{pos}]")
        index = img.get("index", pos)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_IMAGE_INDEX:
            raise UnexpectedResponseError(
                f"task_result.images[{pos}].index is not an integer 0-{MAX_IMAGE_INDEX}"
            )
        watermark = _optional_url(img.get("watermark_url"), f"task_result.images[{pos}].watermark_url")
        out.append(TaskImage(index=index, url=url, watermark_url=watermark))
    return tuple(out)


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
