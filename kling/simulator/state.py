"""Simulated tasks: lifecycle driven by the clock, slots, and the task objects Kling returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kling.simulator.videos import duration_seconds

# A name from `kling.kinds.KINDS` ("image", "omni_image", "text_to_video", ...).
Kind = str
Status = Literal["submitted", "processing", "succeed", "failed"]
FINAL: tuple[Status, ...] = ("succeed", "failed")


def ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass
class SimTask:
    """One provider task; mutable, guarded by the simulator's lock."""

    task_id: str
    kind: Kind
    external_task_id: str | None
    params: dict[str, Any]
    slots: int
    image_count: int
    series: bool
    callback_url: str | None
    created_at: float
    submitted_seconds: float
    processing_seconds: float
    will_fail: bool
    fail_message: str
    # Pixel width, height and target byte size, fixed at create so a URL always serves the same bytes.
    image_spec: tuple[int, int, int | None] = (64, 64, None)
    # The account that created it and the units it deducts if it succeeds.
    account: str = "default"
    units: float = 0.0
    # What the task makes ("image" or "video", from the registry) and a video's target byte size.
    yields: str = "image"
    video_bytes: int | None = None
    status: Status = "submitted"
    status_msg: str = ""
    updated_at: float = 0.0
    ended_at: float | None = None
    expired: bool = False
    history: list[tuple[Status, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.updated_at = self.created_at
        self.history.append(("submitted", self.created_at))

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    def advance(self, now: float) -> list[Status]:
        """Move along the timeline up to `now`; return every status entered, in order."""
        entered: list[Status] = []
        start_processing = self.created_at + self.submitted_seconds
        end = start_processing + self.processing_seconds
        if self.status == "submitted" and now >= start_processing:
            self._enter("processing", start_processing, entered)
        if self.status == "processing" and now >= end:
            if self.will_fail:
                self.status_msg = self.fail_message
                self._enter("failed", end, entered)
            else:
                self._enter("succeed", end, entered)
            self.ended_at = end
        return entered

    def _enter(self, status: Status, at: float, entered: list[Status]) -> None:
        self.status = status
        self.updated_at = at
        self.history.append((status, at))
        entered.append(status)

    def next_change_at(self) -> float | None:
        if self.status == "submitted":
            return self.created_at + self.submitted_seconds
        if self.status == "processing":
            return self.created_at + self.submitted_seconds + self.processing_seconds
        return None

    def is_expired(self, now: float, retention_seconds: float | None) -> bool:
        if self.expired:
            return True
        if retention_seconds is None or self.ended_at is None:
            return False
        return now >= self.ended_at + retention_seconds

    def image_path(self, index: int, *, watermark: bool = False) -> str:
        suffix = "-watermark" if watermark else ""
        return f"/images/{self.task_id}/{index}{suffix}.png"

    def video_path(self, index: int, *, watermark: bool = False) -> str:
        suffix = "-watermark" if watermark else ""
        return f"/videos/{self.task_id}/{index}{suffix}.mp4"

    def _outputs(self, public_url: str) -> list[dict[str, Any]]:
        if self.yields == "video":
            return [
                {
                    "id": f"{self.task_id}-{i}",
                    "url": public_url + self.video_path(i),
                    "watermark_url": public_url + self.video_path(i, watermark=True),
                    "duration": f"{duration_seconds():g}",
                }
                for i in range(self.image_count)
            ]
        return [
            {
                "index": i,
                "url": public_url + self.image_path(i),
                "watermark_url": public_url + self.image_path(i, watermark=True),
            }
            for i in range(self.image_count)
        ]

    def standard_object(self, public_url: str, status: Status, at: float) -> dict[str, Any]:
        """The Kling 3.0 callback shape: `{id, status: succeeded, outputs[{type, ...}], billing[]}`."""
        outputs = []
        if status == "succeed":
            for out in self._outputs(public_url):
                outputs.append(
                    {
                        "type": self.yields,
                        "url": out["url"],
                        "watermark_url": out["watermark_url"],
                        "duration": out.get("duration"),
                        "group_id": None,
                    }
                )
        obj: dict[str, Any] = {
            "id": self.task_id,
            "status": "succeeded" if status == "succeed" else status,
            "message": self.status_msg if status == "failed" else "",
            "create_time": ms(self.created_at),
            "update_time": ms(at),
            "external_id": self.external_task_id or "",
            "outputs": outputs,
        }
        if status in FINAL:
            amount = f"{self.units if status == 'succeed' else 0:g}"
            obj["billing"] = [{"charge_type": "unit", "amount": amount, "package_type": self.yields}]
        return obj

    def task_object(
        self, public_url: str, status: Status | None = None, at: float | None = None
    ) -> dict[str, Any]:
        """Kling's task object, as it was when it entered `status` (default: now)."""
        status = status or self.status
        updated = self.updated_at if at is None else at
        obj: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": status,
            "task_status_msg": self.status_msg if status == "failed" else "",
            "task_info": {"external_task_id": self.external_task_id or ""},
            "created_at": ms(self.created_at),
            "updated_at": ms(updated),
        }
        result: dict[str, Any] = {}
        if status == "succeed":
            outputs = self._outputs(public_url)
            if self.yields == "video":
                result["videos"] = outputs
            elif self.series:
                result["series_images"] = outputs
            else:
                result["images"] = outputs
        obj["task_result"] = result
        if status in FINAL:
            # Kling charges nothing for a failed task.
            obj["final_unit_deduction"] = f"{self.units if status == 'succeed' else 0:g}"
        return obj

    def inspect(self, public_url: str, now: float, retention_seconds: float | None) -> dict[str, Any]:
        """What tests see through `Simulator.tasks()` and `/_sim/tasks`."""
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "external_task_id": self.external_task_id,
            "status": self.status,
            "status_msg": self.status_msg,
            "slots": self.slots,
            "account": self.account,
            "units": self.units,
            "image_count": self.image_count,
            "yields": self.yields,
            "callback_url": self.callback_url,
            "params": self.params,
            "created_at": ms(self.created_at),
            "updated_at": ms(self.updated_at),
            "expired": self.is_expired(now, retention_seconds),
            "history": [{"status": s, "at": ms(t)} for s, t in self.history],
            "task_object": self.task_object(public_url),
        }
