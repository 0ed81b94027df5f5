"""Jobs in any state, made the way the service makes them: through the state machine's writers,
in the caller's session (the caller commits). Tests that need a job at `succeeded` with two
images, or `failed` with a code, ask for it here instead of writing rows by hand."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from kling.types import Task, TaskImage, TaskStatus
from models.base import utcnow
from models.enums import ImageStatus, JobStatus
from models.statemachine import apply_provider_task, create_job, transition
from models.tables import DEFAULT_TENANT, Job

# The path to each status; `failed` branches off after `fail_after`.
_PATH = (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.PROCESSING, JobStatus.SUCCEEDED, JobStatus.ARCHIVED)


def make_job(
    session: Session,
    status: JobStatus | str = JobStatus.QUEUED,
    *,
    n: int = 1,
    prompt: str = "a lighthouse at dusk",
    provider: str = "kling",
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    fail_after: JobStatus | str = JobStatus.SUBMITTED,
    error_code: str = "1301",
    error_message: str = "the content did not pass the policy check",
    bucket: str = "kling-archive",
    tenant: str = DEFAULT_TENANT,
) -> Job:
    """A job at `status` for `tenant` (which must exist). Images: `n` of them from `succeeded` on;
    at `archived` each carries S3 fields (no object is written: tests that read S3 put their own)."""
    target = JobStatus(status)
    params = {"prompt": prompt, "n": n, "aspect_ratio": "1:1"}
    job = create_job(
        session, params, provider=provider, webhook_url=webhook_url, metadata=metadata, tenant=tenant
    ).job
    if target in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        # Never created at the provider: straight from queued, as the worker or the API ends it.
        source = "api" if target is JobStatus.CANCELLED else "worker"
        transition(session, job, target, source=source)
        return job
    last = JobStatus(fail_after) if target is JobStatus.FAILED else target
    task_id = f"task-{uuid.uuid4().hex[:12]}"
    # A job passes `processing` only when asked for it: Kling's callbacks may skip it too.
    path = [
        step for step in _PATH[1 : _PATH.index(last) + 1] if step is last or step is not JobStatus.PROCESSING
    ]
    for step in path:
        if step is JobStatus.SUBMITTED:
            transition(session, job, step, source="worker", provider_task_id=task_id)
        elif step is JobStatus.PROCESSING:
            apply_provider_task(session, job.id, Task(task_id, TaskStatus.PROCESSING), source="callback")
        elif step is JobStatus.SUCCEEDED:
            images = tuple(TaskImage(i, f"https://cdn.klingai.com/{task_id}/{i}.png") for i in range(n))
            succeed = Task(task_id, TaskStatus.SUCCEEDED, external_task_id=job.id, images=images)
            apply_provider_task(session, job.id, succeed, source="callback")
        elif step is JobStatus.ARCHIVED:
            for img in job.images:
                img.status = ImageStatus.ARCHIVED.value
                img.s3_bucket, img.s3_key = bucket, f"images/{job.id}/{img.index}.png"
                img.sha256, img.bytes, img.content_type = f"{img.index:064x}", 100 + img.index, "image/png"
                img.archived_at = utcnow()
            transition(session, job, step, source="archiver")
    if target is JobStatus.FAILED:
        transition(
            session,
            job,
            JobStatus.FAILED,
            source="worker",
            error_code=error_code,
            error_message=error_message,
        )
    return job


def make_video_job(
    session: Session,
    *,
    archived: bool,
    source_url: str,
    duration: float = 5.0,
    kind: str = "text_to_video",
    bucket: str = "kling-archive",
) -> Job:
    """A video job with one output row of type `video`: `succeeded` with the video still only at
    `source_url`, or `archived` with S3 fields (key `images/{job}/0.mp4`; no object is written)."""
    job = make_job(session, JobStatus.SUCCEEDED, prompt="a fox runs")
    job.kind = kind
    (video,) = job.images
    video.type, video.duration, video.source_url = "video", duration, source_url
    if archived:
        video.status = ImageStatus.ARCHIVED.value
        video.s3_bucket, video.s3_key = bucket, f"images/{job.id}/0.mp4"
        video.sha256, video.bytes, video.content_type = "0" * 64, 1000, "video/mp4"
        video.archived_at = utcnow()
        transition(session, job, JobStatus.ARCHIVED, source="archiver")
    return job
