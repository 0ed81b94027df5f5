"""The normalized task type every provider client and the callback parser return."""

from __future__ import annotations

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
        task_id = data.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise UnexpectedResponseError("task object has no task_id")
        info = data.get("task_info") or {}
        ext = info.get("external_task_id") if isinstance(info, Mapping) else None
        result = data.get("task_result") or {}
        if not isinstance(result, Mapping):
            raise UnexpectedResponseError("task_result is not an object")
        return cls(
            task_id=task_id,
            status=TaskStatus.parse(data.get("task_status")),
            status_message=str(data.get("task_status_msg") or ""),
            external_task_id=ext if isinstance(ext, str) and ext else None,
            created_at=ms_to_datetime(data.get("created_at")),
            updated_at=ms_to_datetime(data.get("updated_at")),
            images=_images(result.get("images")),
            series_images=_images(result.get("series_images")),
            raw=dict(data),
        )

    @classmethod
    def from_standard(cls, data: Mapping[str, Any]) -> Task:
        """Build from the newer callback standard: `{id, status, message, outputs[...]}`."""
        task_id = data.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise UnexpectedResponseError("callback has no id")
        outputs = data.get("outputs") or []
        if not isinstance(outputs, list):
            raise UnexpectedResponseError("outputs is not a list")
        images = []
        for i, out in enumerate(outputs):
            if not isinstance(out, Mapping) or not isinstance(out.get("url"), str):
                raise UnexpectedResponseError(f"outputs[{i}] has no url")
            if out.get("type") not in (None, "image"):
                continue
            images.append(TaskImage(index=i, url=out["url"], watermark_url=out.get("watermark_url") or None))
        ext = data.get("external_id")
        return cls(
            task_id=task_id,
            status=TaskStatus.parse(data.get("status")),
            status_message=str(data.get("message") or ""),
            external_task_id=ext if isinstance(ext, str) and ext else None,
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
        if not isinstance(img, Mapping) or not isinstance(img.get("url"), str):
            raise UnexpectedResponseError(f"task_result.images[{pos}] has no url")
        index = img.get("index", pos)
        if not isinstance(index, int) or isinstance(index, bool):
            raise UnexpectedResponseError(f"task_result.images[{pos}].index is not an integer")
        wm = img.get("watermark_url")
        watermark = wm if isinstance(wm, str) and wm else None
        out.append(TaskImage(index=index, url=img["url"], watermark_url=watermark))
    return tuple(out)


def ms_to_datetime(value: object) -> datetime | None:
    """Kling timestamps are Unix milliseconds."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str) and value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    raise UnexpectedResponseError(f"bad timestamp {value!r}")
