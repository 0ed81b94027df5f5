"""The worker's plain functions: submit, release, pump, archive, reconcile, sweep.

Each takes a `Services` and ids, opens its own short transactions, and never holds a database
transaction open across a provider or S3 call. Celery tasks (worker/tasks.py) are thin wrappers
that turn the returned `Outcome` into acks and retries. Every function is safe to run twice.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import func, select

from kling import ImageRequest, KlingError, Task, ValidationError
from kling.client import ImageProvider
from kling.errors import ConcurrencyLimitExceeded, RateLimited
from kling.http import is_ambiguous, is_not_found
from models.base import utcnow
from models.db import session_scope
from models.enums import ImageStatus, JobStatus
from models.statemachine import TaskMismatch, apply_provider_task, transition
from models.tables import Image, Job
from models.tokens import callback_url
from worker import metrics
from worker.archiver import ArchiveVerificationError, NotAnImage, archive_image, object_stem
from worker.fetch import FetchError, FetchRefused, SourceGone, TooLarge
from worker.provider import ProviderNotConfigured
from worker.services import Services

log = logging.getLogger(__name__)

SOURCE_EXPIRED = "source_expired"
ARCHIVE_REFUSED = "archive_refused"
CREATE_UNCERTAIN = "create_uncertain"
# A queued job that holds a lease but made no progress for this long lost its submit (worker
# killed mid-call): it is dispatched again and re-uses its own lease.
STUCK_SUBMIT_SECONDS = 60
# Succeeded jobs not archived after this long get their archive task again (lost message).
STUCK_ARCHIVE_SECONDS = 120


class Step(StrEnum):
    DONE = "done"  # nothing more to do for this message
    WAIT = "wait"  # no slots: the job stays queued, the pump dispatches it when slots free up
    RETRY = "retry"  # transient failure: run again after `retry_in`
    FAILED = "failed"  # the job is now failed


@dataclass(frozen=True)
class Outcome:
    step: Step
    retry_in: float = 0.0
    detail: str = ""


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), in seconds."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311  (jitter, not crypto)


# --- submit -----------------------------------------------------------------------------------------
def submit_job(svc: Services, job_id: str, *, attempt: int = 0) -> Outcome:
    """Create the provider task for a queued job, at most once (DESIGN.md rules 1 and 3)."""
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("submit: job %s does not exist", job_id)
            return Outcome(Step.DONE, detail="no such job")
        if job.status != JobStatus.QUEUED:
            return Outcome(Step.DONE, detail=f"already {job.status}")
        params, slots, provider_name = dict(job.params), job.slots, job.provider

    try:
        provider = svc.provider_for(provider_name)
    except ProviderNotConfigured as exc:
        _fail(svc, job_id, code="provider_not_configured", message=f"{provider_name}: {exc}")
        return Outcome(Step.FAILED, detail=str(exc))

    try:
        request = ImageRequest.from_params(params)
    except ValidationError as exc:
        # The API validates before queueing; this only happens for rows written by hand.
        _fail(svc, job_id, code="invalid_request", message=str(exc), source="worker")
        return Outcome(Step.FAILED, detail=str(exc))

    if not svc.limiter.acquire(job_id, slots):
        return Outcome(Step.WAIT)

    settings = svc.settings
    cb_url = None
    if settings.public_base_url and settings.callback_secret:
        cb_url = callback_url(settings.public_base_url, settings.callback_secret.get_secret_value(), job_id)

    try:
        task = provider.create_image(request, external_task_id=job_id, callback_url=cb_url)
    except (RateLimited, ConcurrencyLimitExceeded) as exc:
        # Not processed: give the slots back and try again later; the job stays queued.
        metrics.provider_errors.labels(code=str(exc.code)).inc()
        svc.limiter.release(job_id)
        return Outcome(Step.RETRY, retry_in=exc.retry_after or backoff(attempt), detail=str(exc))
    except KlingError as exc:
        metrics.provider_errors.labels(code=str(exc.code or exc.http_status or "network")).inc()
        if not is_ambiguous(exc):
            svc.limiter.release(job_id)
            _fail(svc, job_id, code=str(exc.code or exc.http_status or "provider_error"), message=exc.message)
            return Outcome(Step.FAILED, detail=str(exc))
        found = _find_existing(svc, provider, job_id, exc)
        if isinstance(found, Outcome):
            return found
        task = found

    _record_submitted(svc, job_id, task)
    return Outcome(Step.DONE, detail=task.task_id)


def _find_existing(
    svc: Services, provider: ImageProvider, job_id: str, original: KlingError
) -> Task | Outcome:
    """After an ambiguous create: the task may exist. Never create again before knowing."""
    if not provider.supports_external_task_id:
        # The gateway cannot look a task up by our id: a retry could bill twice, so stop here.
        svc.limiter.release(job_id)
        _fail(
            svc,
            job_id,
            code=CREATE_UNCERTAIN,
            message=f"create failed ambiguously and the provider cannot look tasks up by id: {original}",
        )
        return Outcome(Step.FAILED, detail=str(original))
    try:
        return provider.get_image(external_task_id=job_id)
    except KlingError as exc:
        if is_not_found(exc):
            # Not created: safe to create again. Keep the lease; we come straight back.
            return Outcome(Step.RETRY, retry_in=backoff(0, base=0.5), detail=str(original))
        # Lookup failed too: we still don't know. Keep the lease and ask again later.
        return Outcome(Step.RETRY, retry_in=backoff(1), detail=f"{original}; lookup: {exc}")


def _record_submitted(svc: Services, job_id: str, task: Task) -> None:
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:  # deleted meanwhile; the provider task will just run out
            return
        try:
            transition(
                s,
                job,
                JobStatus.SUBMITTED,
                source="worker",
                provider_task_id=task.task_id,
                detail={"provider_task_id": task.task_id},
            )
        except TaskMismatch:
            log.error("submit: job %s got task %s but already has another", job_id, task.task_id)
            raise
        if task.status is not None and task.status.value != "submitted":
            # A lookup after an ambiguous create can find the task further along.
            apply_provider_task(s, job_id, task, source="poll")


def _fail(svc: Services, job_id: str, *, code: str, message: str, source: str = "worker") -> None:
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None:
            transition(s, job, JobStatus.FAILED, source=source, error_code=code, error_message=message)


# --- slots ------------------------------------------------------------------------------------------
def release_slots(svc: Services, job_id: str) -> list[str]:
    """The provider task ended: free its slots and dispatch the next waiting jobs."""
    svc.limiter.release(job_id)
    return pump(svc)


def pump(svc: Services, *, stuck_seconds: float = STUCK_SUBMIT_SECONDS) -> list[str]:
    """Dispatch submit for queued jobs that fit in the free slots; returns the ids dispatched.

    Candidates go in the limiter's own queue order (oldest refused first), then the other queued
    jobs oldest first, so the jobs dispatched are the ones the limiter's fairness rule will admit.
    Queued jobs that hold a lease but went quiet (their submit was lost with a killed worker) are
    dispatched again and re-use their own lease.
    """
    if svc.publish is None:
        return []
    limiter = svc.limiter
    holders = limiter.holders()
    free = limiter.limit - sum(holders.values())
    waiting: list[str] = getattr(limiter, "waiting", list)()
    stuck_before = utcnow() - timedelta(seconds=stuck_seconds)
    with session_scope(svc.sessions) as s:
        queued = {
            job_id: (slots, updated_at)
            for job_id, slots, updated_at in s.execute(
                select(Job.id, Job.slots, Job.updated_at)
                .where(Job.status == JobStatus.QUEUED)
                .order_by(Job.created_at, Job.id)
                .limit(max(100, limiter.limit * 4))
            )
        }
        if waiting:
            missing = [w for w in waiting if w not in queued]
            if missing:
                queued.update(
                    {
                        job_id: (slots, updated_at)
                        for job_id, slots, updated_at in s.execute(
                            select(Job.id, Job.slots, Job.updated_at).where(
                                Job.id.in_(missing), Job.status == JobStatus.QUEUED
                            )
                        )
                    }
                )
    order = [w for w in waiting if w in queued] + [j for j in queued if j not in set(waiting)]
    dispatched: list[str] = []
    for job_id in order:
        slots, updated_at = queued[job_id]
        if job_id in holders:
            if updated_at < stuck_before:
                dispatched.append(job_id)
        elif slots <= free:
            free -= slots
            dispatched.append(job_id)
    for job_id in dispatched:
        svc.publish("submit_job", [job_id])
    return dispatched


# --- archive ----------------------------------------------------------------------------------------
def archive_job(svc: Services, job_id: str, *, attempt: int = 0, source: str = "archiver") -> Outcome:
    """Copy every pending image of a succeeded job into S3, then mark the job archived."""
    settings = svc.settings
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.SUCCEEDED:
            return Outcome(Step.DONE, detail=f"job is {job.status if job else 'gone'}")
        provider_task_id = job.provider_task_id or ""
        pending = [
            (img.id, img.index, img.source_url)
            for img in s.scalars(
                select(Image)
                .where(Image.job_id == job_id, Image.status == ImageStatus.PENDING)
                .order_by(Image.index)
            )
        ]

    fetcher = svc.fetcher
    for image_id, index, url in pending:
        started = utcnow()
        try:
            obj = archive_image(
                svc.s3,
                bucket=settings.s3_bucket,
                key_stem=object_stem(settings.s3_prefix, job_id, index),
                url=url,
                fetcher=fetcher,
                max_bytes=settings.archive_max_bytes,
                metadata={"job-id": job_id, "provider-task-id": provider_task_id},
            )
        except SourceGone as exc:
            _image_lost(
                svc,
                job_id,
                image_id=image_id,
                status=ImageStatus.EXPIRED,
                code=SOURCE_EXPIRED,
                message=str(exc),
                source=source,
            )
            return Outcome(Step.FAILED, detail=str(exc))
        except (FetchRefused, TooLarge, NotAnImage) as exc:
            _image_lost(
                svc,
                job_id,
                image_id=image_id,
                status=ImageStatus.FAILED,
                code=ARCHIVE_REFUSED,
                message=str(exc),
                source=source,
            )
            return Outcome(Step.FAILED, detail=str(exc))
        except (FetchError, ArchiveVerificationError, BotoCoreError, ClientError, OSError) as exc:
            log.warning("archive: job %s image %s: %s (will retry)", job_id, index, exc)
            return Outcome(Step.RETRY, retry_in=backoff(attempt, base=2.0), detail=str(exc))
        seconds = (utcnow() - started).total_seconds()
        metrics.archive_bytes.inc(obj.bytes)
        metrics.archive_seconds.observe(seconds)
        with session_scope(svc.sessions) as s:
            img = s.get(Image, image_id)
            if img is not None and img.status == ImageStatus.PENDING:
                img.status = ImageStatus.ARCHIVED.value
                img.s3_bucket, img.s3_key = obj.bucket, obj.key
                img.sha256, img.bytes, img.content_type = obj.sha256, obj.bytes, obj.content_type
                img.archived_at = utcnow()

    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            return Outcome(Step.DONE)
        left = s.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.job_id == job_id, Image.status != ImageStatus.ARCHIVED)
        )
        if left == 0:
            transition(s, job, JobStatus.ARCHIVED, source=source, detail={"images": len(pending)})
    return Outcome(Step.DONE)


def _image_lost(
    svc: Services,
    job_id: str,
    *,
    image_id: int,
    status: ImageStatus,
    code: str,
    message: str,
    source: str,
) -> None:
    with session_scope(svc.sessions) as s:
        img = s.get(Image, image_id)
        if img is not None and img.status == ImageStatus.PENDING:
            img.status = status.value
        job = s.get(Job, job_id)
        if job is not None:
            transition(s, job, JobStatus.FAILED, source=source, error_code=code, error_message=message)


# --- reconcile --------------------------------------------------------------------------------------
@dataclass
class ReconcileReport:
    polled: int = 0
    changed: int = 0
    errors: int = 0
    rearchived: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)


def reconcile(svc: Services, *, limit: int = 200) -> ReconcileReport:
    """Poll the provider for in-flight jobs that went quiet, and repair lost messages.

    This is the safety net of DESIGN.md rule 2: with every callback lost, or no public URL at all,
    jobs still finish through here.
    """
    report = ReconcileReport()
    cutoff = utcnow() - timedelta(seconds=svc.settings.reconcile_after_seconds)
    with session_scope(svc.sessions) as s:
        quiet = s.execute(
            select(Job.id, Job.provider_task_id, Job.provider)
            .where(
                Job.status.in_([JobStatus.SUBMITTED, JobStatus.PROCESSING]),
                Job.updated_at <= cutoff,
                (Job.last_polled_at.is_(None)) | (Job.last_polled_at <= cutoff),
            )
            .order_by(Job.updated_at)
            .limit(limit)
        ).all()
    for job_id, task_id, provider_name in quiet:
        try:
            provider = svc.provider_for(provider_name)
            task = provider.get_image(task_id) if task_id else provider.get_image(external_task_id=job_id)
        except (KlingError, ProviderNotConfigured) as exc:
            report.errors += 1
            log.warning("reconcile: job %s: %s", job_id, exc)
            continue
        report.polled += 1
        with session_scope(svc.sessions) as s:
            result = apply_provider_task(s, job_id, task, source="poll")
        if result.changed:
            report.changed += 1
        if not task.status.is_final:
            # Still running at the provider: keep its slots leased.
            svc.limiter.renew(job_id)

    report.rearchived = _redispatch_archives(svc, stuck_seconds=svc.settings.stuck_archive_seconds)
    report.released = _release_leaked(svc)
    report.redispatched = pump(svc, stuck_seconds=svc.settings.stuck_submit_seconds)
    return report


def _redispatch_archives(svc: Services, *, stuck_seconds: float = STUCK_ARCHIVE_SECONDS) -> list[str]:
    if svc.publish is None:
        return []
    before = utcnow() - timedelta(seconds=stuck_seconds)
    with session_scope(svc.sessions) as s:
        ids = list(
            s.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.SUCCEEDED, Job.updated_at <= before)
                .order_by(Job.updated_at)
                .limit(100)
            )
        )
    for job_id in ids:
        svc.publish("archive_job", [job_id])
    return ids


def _release_leaked(svc: Services) -> list[str]:
    """Leases held for jobs the provider is done with (a lost release message)."""
    holders = list(svc.limiter.holders())
    if not holders:
        return []
    with session_scope(svc.sessions) as s:
        done = list(
            s.scalars(
                select(Job.id).where(
                    Job.id.in_(holders),
                    Job.status.in_([JobStatus.SUCCEEDED, JobStatus.ARCHIVED, JobStatus.FAILED]),
                )
            )
        )
        known = set(s.scalars(select(Job.id).where(Job.id.in_(holders))))
    gone = [h for h in holders if h not in known]
    for job_id in [*done, *gone]:
        svc.limiter.release(job_id)
    return [*done, *gone]


# --- sweep ------------------------------------------------------------------------------------------
@dataclass
class SweepReport:
    jobs: list[str] = field(default_factory=list)
    pending_images: int = 0
    at_risk: int = 0


def sweep(svc: Services, *, dry_run: bool = False, limit: int = 1000) -> SweepReport:
    """Archive whatever is still not archived (oldest provider time first); count images at risk.

    An image is at risk when it is not archived and its provider copy is older than
    `RETENTION_DAYS - 5` days: a few more days and Kling deletes it.
    """
    settings = svc.settings
    risk_before = utcnow() - timedelta(days=settings.alert_after_days)
    with session_scope(svc.sessions) as s:
        rows = s.execute(
            select(Image.job_id, func.min(Image.provider_created_at))
            .join(Job, Job.id == Image.job_id)
            .where(Image.status == ImageStatus.PENDING, Job.status == JobStatus.SUCCEEDED)
            .group_by(Image.job_id)
            .order_by(func.min(Image.provider_created_at))
            .limit(limit)
        ).all()
        pending = s.scalar(select(func.count()).select_from(Image).where(Image.status == ImageStatus.PENDING))
        at_risk = s.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.status == ImageStatus.PENDING, Image.provider_created_at <= risk_before)
        )
    report = SweepReport(jobs=[r[0] for r in rows], pending_images=pending or 0, at_risk=at_risk or 0)
    metrics.images_at_risk.set(report.at_risk)
    if report.at_risk:
        log.warning(
            "sweep: %d image(s) not archived within %d days of the provider's %d-day deletion",
            report.at_risk,
            5,
            settings.retention_days,
        )
    if not dry_run and svc.publish is not None:
        for job_id in report.jobs:
            svc.publish("archive_job", [job_id])
    return report
