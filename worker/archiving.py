"""Archiving: copy every output (image or video) of a succeeded job into S3, then mark the job archived.

`archive_job` opens its own short transactions, never holds one open across a provider or S3 call,
and is safe to run twice; the S3 copy of one image is `worker.archiver`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select

from kling import KlingError
from kling.http import backoff
from models.base import utcnow
from models.db import session_scope
from models.enums import ImageStatus, JobStatus
from models.statemachine import apply_provider_task, transition
from models.tables import Image, Job
from worker import metrics
from worker.archiver import ArchivedObject, ArchiveVerificationError, archive_image, object_stem
from worker.claims import ClaimLost, claim_heartbeat, keep_claim, renew_claim, take_claim
from worker.fetch import FetchError, FetchRefused, SourceGone, TooLarge
from worker.media import IMAGE, WrongMediaType, archive_cap
from worker.outcome import Outcome, Step, fail_job
from worker.provider import ProviderNotConfigured
from worker.services import Services

if TYPE_CHECKING:
    from celery import Celery

    from worker.tasks import Schedule

log = logging.getLogger(__name__)

SOURCE_EXPIRED = "source_expired"
ARCHIVE_REFUSED = "archive_refused"
NO_IMAGES = "no_images"


def archive_job(
    svc: Services, job_id: str, *, attempt: int = 0, claim: str | None = None, source: str = "archiver"
) -> Outcome:
    """Copy every pending image of a succeeded job into S3, then mark the job archived.

    Every image is tried: one lost image fails the job only after the others are kept.
    """
    settings = svc.settings
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.SUCCEEDED:
            return Outcome(Step.DONE, detail=f"job is {job.status if job else 'gone'}")
        token = take_claim(s, job_id, JobStatus.SUCCEEDED, claim, svc.settings.stuck_archive_seconds)
        if token is None:
            return Outcome(Step.DONE, detail="another run owns this job")
        provider_task_id, provider_name, account = job.provider_task_id or "", job.provider, job.account
        kind = job.kind
        images = list(s.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)))
        # `s3_bucket` on a pending image marks an earlier attempt: an object may already be stored.
        pending = [
            (img.id, img.index, img.source_url, img.s3_bucket is not None, img.type or IMAGE)
            for img in images
            if img.status == ImageStatus.PENDING
        ]
        # Mark this run's attempts in the claim's own transaction (one commit, not one per image).
        for img in images:
            if img.status == ImageStatus.PENDING and img.s3_bucket is None:
                img.s3_bucket = settings.s3_bucket

    if not images:
        # The provider said `succeed` without images (a bare callback): ask it for them.
        outcome = _fetch_missing_images(
            svc,
            job_id,
            provider_name=provider_name,
            account=account,
            kind=kind,
            provider_task_id=provider_task_id,
            token=token,
            attempt=attempt,
        )
        if outcome is not None:
            return outcome
        return archive_job(svc, job_id, attempt=attempt, claim=token, source=source)

    lost: tuple[str, str] | None = None
    # Renews the claim from inside the copy: one image may take longer than a claim period.
    heartbeat = claim_heartbeat(svc, job_id, token, settings.stuck_archive_seconds)
    for position, (image_id, index, url, tried, output_type) in enumerate(pending):
        started = utcnow()
        cap, cap_setting = archive_cap(
            output_type,
            image_max_bytes=settings.archive_max_bytes,
            video_max_bytes=settings.archive_max_bytes_video,
        )
        try:
            obj = archive_image(
                svc.s3,
                bucket=settings.s3_bucket,
                key_stem=object_stem(settings.s3_prefix, job_id, index),
                url=url,
                fetcher=svc.fetcher,
                max_bytes=cap,
                metadata={"job-id": job_id, "provider-task-id": provider_task_id},
                # Only a re-run can find its own object or open upload (saves LISTs on the first run).
                reuse_existing=tried,
                heartbeat=heartbeat,
                output_type=output_type,
            )
        except ClaimLost:
            log.warning(
                "archive: job %s: another run took the claim during image %s; stopping", job_id, index
            )
            return Outcome(Step.DONE, detail="claim lost to another run")
        except (SourceGone, FetchRefused, TooLarge, WrongMediaType) as exc:
            expired = isinstance(exc, SourceGone)
            code = SOURCE_EXPIRED if expired else ARCHIVE_REFUSED
            _set_image(svc, image_id, ImageStatus.EXPIRED if expired else ImageStatus.FAILED)
            # Which output, and for a cap which setting to raise: "video 0: ... (ARCHIVE_MAX_BYTES_VIDEO)".
            hint = f" ({cap_setting})" if isinstance(exc, TooLarge) else ""
            lost = lost or (code, f"{output_type} {index}: {exc}{hint}")
            continue
        except (FetchError, ArchiveVerificationError, BotoCoreError, ClientError, OSError) as exc:
            log.warning("archive: job %s image %s: %s (will retry)", job_id, index, exc)
            retry_in = backoff(attempt, base=2.0, cap=60.0)
            return keep_claim(svc, job_id, token, retry_in, settings.stuck_archive_seconds)
        if obj.parts_reused:
            log.info(
                "archive: job %s %s %s resumed: %d parts kept", job_id, output_type, index, obj.parts_reused
            )
        metrics.archive_bytes.inc(obj.bytes)
        metrics.archive_seconds.observe((utcnow() - started).total_seconds())
        if position == len(pending) - 1 and lost is None:
            # The last one: recorded with the job's move to archived, in one transaction.
            _set_image(svc, image_id, ImageStatus.ARCHIVED, obj, archived=(job_id, len(images), source))
            return Outcome(Step.DONE)
        # Still ours for another full period: a job of many large images outlasts one claim.
        _set_image(
            svc, image_id, ImageStatus.ARCHIVED, obj, renew=(job_id, token, settings.stuck_archive_seconds)
        )

    if lost is not None:
        fail_job(svc, job_id, code=lost[0], message=lost[1], source=source)
        return Outcome(Step.FAILED, detail=lost[1])
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            return Outcome(Step.DONE)
        transition(s, job, JobStatus.ARCHIVED, source=source, detail={"images": len(images)})
    return Outcome(Step.DONE)


def _fetch_missing_images(
    svc: Services,
    job_id: str,
    *,
    provider_name: str,
    account: str | None,
    kind: str,
    provider_task_id: str,
    token: str,
    attempt: int,
) -> Outcome | None:
    """Poll the provider for a succeeded job that has no image rows; None when images were added."""
    try:
        task = svc.provider_for_account(account, provider_name).get_task(
            kind, provider_task_id or None, external_task_id=None
        )
    except (KlingError, ProviderNotConfigured) as exc:
        log.warning("archive: job %s has no images and the provider lookup failed: %s", job_id, exc)
        retry_in = backoff(attempt, base=2.0, cap=60.0)
        return keep_claim(svc, job_id, token, retry_in, svc.settings.stuck_archive_seconds)
    if not (task.outputs or task.images or task.series_images):
        fail_job(svc, job_id, code=NO_IMAGES, message="the provider reported success without any image")
        return Outcome(Step.FAILED, detail="no images")
    with session_scope(svc.sessions) as s:
        apply_provider_task(s, job_id, task, source="poll")
    return None


def _set_image(
    svc: Services,
    image_id: int,
    status: ImageStatus,
    obj: ArchivedObject | None = None,
    *,
    renew: tuple[str, str, float] | None = None,
    archived: tuple[str, int, str] | None = None,
) -> None:
    """Record an image's outcome; with `renew` = (job id, claim, seconds), extend the claim too;
    with `archived` = (job id, images, source), move the job to archived too."""
    with session_scope(svc.sessions) as s:
        img = s.get(Image, image_id)
        if img is not None and img.status == ImageStatus.PENDING:
            img.status = status.value
            if obj is not None:
                img.s3_bucket, img.s3_key = obj.bucket, obj.key
                img.sha256, img.bytes, img.content_type = obj.sha256, obj.bytes, obj.content_type
                img.archived_at = utcnow()
        if renew is not None:
            renew_claim(s, *renew)
        if archived is not None and (job := s.get(Job, archived[0])) is not None:
            transition(s, job, JobStatus.ARCHIVED, source=archived[2], detail={"images": archived[1]})


def register(app: Celery) -> Schedule:
    """The archive task; the sweep (worker.repair) re-queues what it missed."""
    # Imported here, not at the top: the web app imports this package without loading Celery.
    from worker.tasks import ARCHIVE_TASK, claimed_step_task

    claimed_step_task(app, ARCHIVE_TASK, archive_job)
    return {}
