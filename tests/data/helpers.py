"""Builders shared by the data-layer tests: jobs, provider tasks and task bodies, signed headers,
DB snapshots."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kling.callbacks import sign_callback
from kling.types import Task, TaskImage, TaskStatus
from models.statemachine import create_job
from models.tables import CallbackEvent, Image, Job, Outbox, Transition
from tests.conftest import TEST_WEBHOOK_SECRET

PARAMS = {"prompt": "a lighthouse at dusk", "n": 2}


def task_for(
    job: Job, status: TaskStatus, *, task_id: str = "task-1", images: int = 2, msg: str = ""
) -> Task:
    return Task(
        task_id=task_id,
        status=status,
        status_message=msg,
        external_task_id=job.id,
        created_at=datetime(2026, 6, 10, 12, 0, tzinfo=UTC),
        images=tuple(TaskImage(index=i, url=f"https://cdn.klingai.com/{i}.png") for i in range(images))
        if status is TaskStatus.SUCCEEDED
        else (),
    )


def new_job(session: Session, **kwargs: object) -> Job:
    job = create_job(session, PARAMS, provider="kling", **kwargs).job  # type: ignore[arg-type]
    session.commit()
    return job


KLING_STATUS = {
    "submitted": "submitted",
    "processing": "processing",
    "succeeded": "succeed",
    "failed": "failed",
}


def legacy_body(
    task_id: str,
    status: str,
    *,
    external_task_id: str | None = None,
    n_images: int = 2,
    message: str = "",
    updated_at: int = 1_781_080_794_151,
) -> dict[str, Any]:
    """A legacy Kling task object as a callback body (`status` in our spelling)."""
    body: dict[str, Any] = {
        "task_id": task_id,
        "task_status": KLING_STATUS[status],
        "task_status_msg": message,
        "created_at": 1_781_080_778_802,
        "updated_at": updated_at,
    }
    if external_task_id is not None:
        body["task_info"] = {"external_task_id": external_task_id}
    if status == "succeeded":
        body["task_result"] = {
            "images": [
                {"index": i, "url": f"https://cdn.klingai.com/{task_id}/{i}.png"} for i in range(n_images)
            ]
        }
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def signed_headers(
    body: bytes, *, secret: str = TEST_WEBHOOK_SECRET, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_callback(secret, msg_id, ts, body),
    }


def snapshot(session: Session) -> dict[str, Any]:
    """Everything a callback could change, to assert that a rejected one changed nothing."""
    session.expire_all()
    counts = {
        model.__tablename__: session.scalar(select(func.count()).select_from(model))
        for model in (Job, Transition, CallbackEvent, Image, Outbox)
    }
    jobs = {
        row.id: (row.status, row.provider_task_id, row.error_code) for row in session.scalars(select(Job))
    }
    return {"counts": counts, "jobs": jobs}


def transitions_of(session: Session, job_id: str) -> list[tuple[str | None, str, str]]:
    session.expire_all()
    rows = session.scalars(select(Transition).where(Transition.job_id == job_id).order_by(Transition.id))
    return [(t.from_status, t.to_status, t.source) for t in rows]


def outbox_tasks(session: Session, job_id: str) -> list[str]:
    rows = session.scalars(select(Outbox).order_by(Outbox.id))
    return [row.task for row in rows if row.args == [job_id]]


# The rules of docs/architecture.md ("Job lifecycle"), restated independently of models.rules: the
# model the state machine's tests check it against.
RANK = {"queued": 0, "submitted": 1, "processing": 2, "succeeded": 3, "archived": 4, "failed": 5}
FINAL = ("archived", "failed", "cancelled", "expired")
NEVER_CREATED = ("cancelled", "expired")  # only a queued job, never created, may end so


def expected_outcome(current: str, reported: str) -> str:
    """What a provider report of `reported` means for a job at `current`."""
    if current == reported or (current == "archived" and reported == "succeeded"):
        return "duplicate"
    if current == "succeeded" or current in FINAL:
        return "stale"
    return "applied" if reported == "failed" or RANK[reported] > RANK[current] else "stale"


def expected_move(current: str, target: str) -> bool:
    """Whether our own code may move a job from `current` to `target`."""
    if current in FINAL or current == target:
        return False
    if target in NEVER_CREATED:
        return current == "queued"
    if target == "archived":
        return current == "succeeded"
    return target == "failed" or RANK[target] > RANK[current]
