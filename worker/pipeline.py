"""The worker's plain functions: submit, release, pump, archive, reconcile, sweep.

Each takes a `Services` and ids, opens its own short transactions, and never holds a database
transaction open across a provider or S3 call. Celery tasks (worker/tasks.py) are thin wrappers
that turn the returned `Outcome` into acks and retries. Every function is safe to run twice.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import ColumnElement, Select, func, or_, select, update
from sqlalchemy.orm import Session

from kling import ImageRequest, KlingError, Task, TaskStatus, ValidationError
from kling.client import ImageProvider
from kling.errors import ConcurrencyLimitExceeded, RateLimited
from kling.http import is_ambiguous, is_not_found
from models.base import utcnow
from models.db import session_scope
from models.enums import ImageStatus, JobStatus
from models.outbox import RELEASE_SLOTS, QueuedTask
from models.statemachine import TaskMismatch, apply_provider_task, transition
from models.tables import Image, Job, Notification
from models.tokens import callback_url
from worker import metrics
from worker.archiver import ArchivedObject, ArchiveVerificationError, NotAnImage, archive_image, object_stem
from worker.fetch import FetchError, FetchRefused, SourceGone, TooLarge
from worker.outbox import publish_rows
from worker.provider import ProviderNotConfigured
from worker.services import Services

log = logging.getLogger(__name__)

SOURCE_EXPIRED = "source_expired"
ARCHIVE_REFUSED = "archive_refused"
CREATE_UNCERTAIN = "create_uncertain"
NO_IMAGES = "no_images"
EXCEEDS_CONCURRENCY = "exceeds_concurrency"
# A final job with a webhook_url and no delivery row after this long lost its notify message.
STUCK_NOTIFY_SECONDS = 60.0
# Downstream deliveries are retried for this long, then given up.
GIVE_UP_AFTER = timedelta(hours=24)


class Step(StrEnum):
    DONE = "done"  # nothing more to do for this message
    WAIT = "wait"  # no slots: the job stays queued, the pump dispatches it when slots free up
    RETRY = "retry"  # transient failure: run again after `retry_in`, keeping the claim
    FAILED = "failed"  # the job is now failed


@dataclass(frozen=True)
class Outcome:
    step: Step
    retry_in: float = 0.0
    detail: str = ""
    # The claim a RETRY keeps: the retried message presents it to take the job back.
    claim: str | None = None


def backoff(attempt: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), in seconds."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311  (jitter, not crypto)


# --- claims -----------------------------------------------------------------------------------------
def _claim(s: Session, job_id: str, status: JobStatus, claim: str | None, hold: float) -> str | None:
    """Take the job's current step for this run for `hold` seconds, or None if a live run owns it.

    Redelivered messages, re-dispatches by the reconciler and the pump all end here: only one run
    at a time talks to the provider or S3 for a job. A retry presents the claim it was given. A run
    that dies leaves its claim to expire (`STUCK_SUBMIT_SECONDS` / `STUCK_ARCHIVE_SECONDS`, longer
    than the slowest provider or S3 call), then the reconciler dispatches the step again.
    """
    token = claim or str(uuid.uuid4())
    now = utcnow()
    free = or_(Job.claimed_until.is_(None), Job.claimed_until < now)
    if claim is not None:
        free = or_(free, Job.claim_token == claim)
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status, free)
        .values(claim_token=token, claimed_until=now + timedelta(seconds=hold))
        .execution_options(synchronize_session=False)
    )
    return token if result.rowcount == 1 else None  # type: ignore[attr-defined]


def _keep_claim(svc: Services, job_id: str, token: str, retry_in: float, hold: float) -> Outcome:
    """Hold the claim through the retry's countdown, so nothing else starts the step meanwhile."""
    until = utcnow() + timedelta(seconds=retry_in + hold)
    with session_scope(svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id, Job.claim_token == token).values(claimed_until=until))
    return Outcome(Step.RETRY, retry_in=retry_in, claim=token)


def _unclaimed(now: datetime) -> ColumnElement[bool]:
    return or_(Job.claimed_until.is_(None), Job.claimed_until < now)


# --- submit -----------------------------------------------------------------------------------------
def submit_job(svc: Services, job_id: str, *, attempt: int = 0, claim: str | None = None) -> Outcome:
    """Create the provider task for a queued job, at most once (DESIGN.md rules 1 and 3)."""
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("submit: job %s does not exist", job_id)
            return Outcome(Step.DONE, detail="no such job")
        if job.status != JobStatus.QUEUED:
            return Outcome(Step.DONE, detail=f"already {job.status}")
        token = _claim(s, job_id, JobStatus.QUEUED, claim, svc.settings.stuck_submit_seconds)
        if token is None:
            return Outcome(Step.DONE, detail="another run owns this job")
        params, slots, provider_name = dict(job.params), job.slots, job.provider
        s.refresh(job)
        tried_before = job.create_attempts > 0
        try:
            provider = svc.provider_for(provider_name)
            request = ImageRequest.from_params(params)
        except (ProviderNotConfigured, ValidationError) as exc:
            unusable: Exception | None = exc
        else:
            unusable = None
            if slots <= svc.limiter.limit:
                if not svc.limiter.acquire(job_id, slots):
                    # No slots (the common case while a batch waits): give the claim back by not
                    # committing it, one transaction instead of a claim and an unclaim. The lock
                    # the claim took on the row is held only for the limiter's one Redis call.
                    s.rollback()
                    return Outcome(Step.WAIT)
                # A create may go out from here on: count it in the claim's commit (one commit on
                # a slot hand-off, not two). Nothing but local checks runs between this commit and
                # the create, as when the count had a transaction of its own.
                s.execute(update(Job).where(Job.id == job_id).values(create_attempts=Job.create_attempts + 1))

    if isinstance(unusable, ProviderNotConfigured):
        _fail(svc, job_id, code="provider_not_configured", message=f"{provider_name}: {unusable}")
        return Outcome(Step.FAILED, detail=str(unusable))
    if unusable is not None:
        # The API validates before queueing; this only happens for rows written by hand.
        _fail(svc, job_id, code="invalid_request", message=str(unusable))
        return Outcome(Step.FAILED, detail=str(unusable))
    hold = svc.settings.stuck_submit_seconds
    if slots > svc.limiter.limit:
        message = f"n={slots} needs more slots than KLING_CONCURRENCY={svc.limiter.limit}"
        _fail(svc, job_id, code=EXCEEDS_CONCURRENCY, message=message)
        return Outcome(Step.FAILED, detail=message)

    if tried_before:
        # An earlier run sent a create and we never learned its fate: ask before creating again.
        found = _find_existing(svc, provider, job_id, token, None)
        if isinstance(found, Task):
            _record_submitted(svc, job_id, found)
            return Outcome(Step.DONE, detail=found.task_id)
        if found.step is not Step.DONE:
            return found

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
        # Rate and concurrency limits clear within seconds: retry soon, whatever the attempt count.
        return _keep_claim(svc, job_id, token, exc.retry_after or backoff(attempt, base=0.5, cap=10), hold)
    except KlingError as exc:
        metrics.provider_errors.labels(code=str(exc.code or exc.http_status or "network")).inc()
        if not is_ambiguous(exc):
            svc.limiter.release(job_id)
            _fail(svc, job_id, code=str(exc.code or exc.http_status or "provider_error"), message=exc.message)
            return Outcome(Step.FAILED, detail=str(exc))
        found = _find_existing(svc, provider, job_id, token, exc)
        if not isinstance(found, Task):
            return found
        task = found

    _record_submitted(svc, job_id, task)
    return Outcome(Step.DONE, detail=task.task_id)


def _find_existing(
    svc: Services, provider: ImageProvider, job_id: str, token: str, original: KlingError | None
) -> Task | Outcome:
    """A create may have gone through: look the task up by our id. Never create again before knowing.

    Returns the task, DONE when it surely does not exist (create now), or the RETRY/FAILED outcome.
    """
    if not provider.supports_external_task_id:
        # The gateway cannot look a task up by our id: a retry could bill twice, so stop here.
        svc.limiter.release(job_id)
        _fail(
            svc,
            job_id,
            code=CREATE_UNCERTAIN,
            message=f"a create failed ambiguously and the provider cannot look tasks up by id: {original}",
        )
        return Outcome(Step.FAILED, detail=str(original))
    try:
        return provider.get_image(external_task_id=job_id)
    except KlingError as exc:
        if not is_not_found(exc):
            # The lookup failed too: we still don't know. Keep the lease and ask again later.
            return _keep_claim(svc, job_id, token, backoff(1), svc.settings.stuck_submit_seconds)
    if original is None:
        return Outcome(Step.DONE)
    # Not found right after an ambiguous failure: retry shortly; the next run looks up again first.
    return _keep_claim(svc, job_id, token, 0.5 + backoff(0, base=0.5), svc.settings.stuck_submit_seconds)


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
        if task.status is not TaskStatus.SUBMITTED:
            # A lookup after an ambiguous create can find the task further along.
            apply_provider_task(s, job_id, task, source="poll")


def _fail(svc: Services, job_id: str, *, code: str, message: str, source: str = "worker") -> None:
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None:
            transition(s, job, JobStatus.FAILED, source=source, error_code=code, error_message=message)


# --- slots ------------------------------------------------------------------------------------------
def release_slots(svc: Services, job_id: str, *, durable: bool = False) -> list[str]:
    """The provider task ended: free its slots and dispatch the next waiting jobs.

    The webhook calls this right after a final callback and, when it went through, marks the
    task's `release_slots` outbox row done. A call that finds the lease gone does not pump again:
    a second pump would dispatch the same waiting job twice while its first message is queued.
    The `release_slots` task (`durable=True`) runs only when that did not happen (or for a report
    a poller applied), so it pumps even when the lease is already gone: an earlier release whose
    pump failed (broker or database down) must not leave the freed slots idle.
    """
    if not svc.limiter.release(job_id) and not durable:
        return []
    return pump(svc)


def hand_off_slots(svc: Services, job_id: str, rows: Sequence[QueuedTask]) -> None:
    """Right after a final provider report committed: free the task's slots for the next jobs,
    then publish the outbox rows the report wrote. Its `release_slots` row is marked done without
    being sent only when the release here went through (that task stays the durable path)."""
    try:
        release_slots(svc, job_id)
        done: tuple[str, ...] = (RELEASE_SLOTS,)
    except Exception as exc:  # noqa: BLE001  (the worker's release_slots task will do it)
        log.warning("releasing slots after the report failed, a worker will: %s", type(exc).__name__)
        done = ()
    if svc.publish is not None:
        publish_rows(svc.sessions, svc.publish, rows, done=done)


def pump(svc: Services) -> list[str]:
    """Dispatch submit for unclaimed queued jobs that fit in the free slots; returns their ids.

    Candidates go in the limiter's own queue order (oldest refused first), then the other queued
    jobs oldest first, so the jobs dispatched are the ones the limiter's fairness rule will admit.
    A queued job that holds a lease but no live claim lost its submit run (worker killed): it is
    dispatched again and re-uses its own lease. Claimed jobs are left alone: a run owns them.
    """
    if svc.publish is None:
        return []
    limiter = svc.limiter
    holders = limiter.holders()
    free = limiter.limit - sum(holders.values())
    waiting: list[str] = getattr(limiter, "waiting", list)()
    now = utcnow()
    with session_scope(svc.sessions) as s:
        queued = dict(
            s.execute(
                select(Job.id, Job.slots)
                .where(Job.status == JobStatus.QUEUED, _unclaimed(now))
                .order_by(Job.created_at, Job.id)
                .limit(max(100, limiter.limit * 4))
            ).all()
        )
        missing = [w for w in waiting if w not in queued]
        if missing:
            queued.update(
                s.execute(
                    select(Job.id, Job.slots).where(
                        Job.id.in_(missing), Job.status == JobStatus.QUEUED, _unclaimed(now)
                    )
                ).all()
            )
    waiting_set = set(waiting)
    order = [w for w in waiting if w in queued] + [j for j in queued if j not in waiting_set]
    dispatched: list[str] = []
    for job_id in order:
        slots = queued[job_id]
        if job_id in holders:
            dispatched.append(job_id)
        elif slots <= free:
            free -= slots
            dispatched.append(job_id)
    for job_id in dispatched:
        svc.publish("submit_job", [job_id])
    return dispatched


# --- archive ----------------------------------------------------------------------------------------
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
        token = _claim(s, job_id, JobStatus.SUCCEEDED, claim, svc.settings.stuck_archive_seconds)
        if token is None:
            return Outcome(Step.DONE, detail="another run owns this job")
        provider_task_id, provider_name = job.provider_task_id or "", job.provider
        images = list(s.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)))
        # `s3_bucket` on a pending image marks an earlier attempt: an object may already be stored.
        pending = [
            (img.id, img.index, img.source_url, img.s3_bucket is not None)
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
            provider_task_id=provider_task_id,
            token=token,
            attempt=attempt,
        )
        if outcome is not None:
            return outcome
        return archive_job(svc, job_id, attempt=attempt, claim=token, source=source)

    lost: tuple[str, str] | None = None
    for image_id, index, url, tried in pending:
        started = utcnow()
        try:
            obj = archive_image(
                svc.s3,
                bucket=settings.s3_bucket,
                key_stem=object_stem(settings.s3_prefix, job_id, index),
                url=url,
                fetcher=svc.fetcher,
                max_bytes=settings.archive_max_bytes,
                metadata={"job-id": job_id, "provider-task-id": provider_task_id},
                # Only a re-run can find its own object (saves a LIST per image on the first run).
                reuse_existing=tried,
            )
        except (SourceGone, FetchRefused, TooLarge, NotAnImage) as exc:
            expired = isinstance(exc, SourceGone)
            code = SOURCE_EXPIRED if expired else ARCHIVE_REFUSED
            _set_image(svc, image_id, ImageStatus.EXPIRED if expired else ImageStatus.FAILED)
            lost = lost or (code, str(exc))
            continue
        except (FetchError, ArchiveVerificationError, BotoCoreError, ClientError, OSError) as exc:
            log.warning("archive: job %s image %s: %s (will retry)", job_id, index, exc)
            return _keep_claim(svc, job_id, token, backoff(attempt, base=2.0), settings.stuck_archive_seconds)
        metrics.archive_bytes.inc(obj.bytes)
        metrics.archive_seconds.observe((utcnow() - started).total_seconds())
        # Still ours for another full period: a job of many large images outlasts one claim.
        _set_image(
            svc, image_id, ImageStatus.ARCHIVED, obj, renew=(job_id, token, settings.stuck_archive_seconds)
        )

    if lost is not None:
        _fail(svc, job_id, code=lost[0], message=lost[1], source=source)
        return Outcome(Step.FAILED, detail=lost[1])
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            return Outcome(Step.DONE)
        transition(s, job, JobStatus.ARCHIVED, source=source, detail={"images": len(images)})
    return Outcome(Step.DONE)


def _fetch_missing_images(
    svc: Services, job_id: str, *, provider_name: str, provider_task_id: str, token: str, attempt: int
) -> Outcome | None:
    """Poll the provider for a succeeded job that has no image rows; None when images were added."""
    try:
        task = svc.provider_for(provider_name).get_image(provider_task_id or None, external_task_id=None)
    except (KlingError, ProviderNotConfigured) as exc:
        log.warning("archive: job %s has no images and the provider lookup failed: %s", job_id, exc)
        return _keep_claim(svc, job_id, token, backoff(attempt, base=2.0), svc.settings.stuck_archive_seconds)
    if not (task.images or task.series_images):
        _fail(svc, job_id, code=NO_IMAGES, message="the provider reported success without any image")
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
) -> None:
    """Record an image's outcome; with `renew` = (job id, claim, seconds), extend the claim too."""
    with session_scope(svc.sessions) as s:
        img = s.get(Image, image_id)
        if img is not None and img.status == ImageStatus.PENDING:
            img.status = status.value
            if obj is not None:
                img.s3_bucket, img.s3_key = obj.bucket, obj.key
                img.sha256, img.bytes, img.content_type = obj.sha256, obj.bytes, obj.content_type
                img.archived_at = utcnow()
        if renew is not None:
            job_id, token, seconds = renew
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.claim_token == token)
                .values(claimed_until=utcnow() + timedelta(seconds=seconds))
            )


# --- reconcile --------------------------------------------------------------------------------------
@dataclass
class ReconcileReport:
    polled: int = 0
    changed: int = 0
    errors: int = 0
    rearchived: list[str] = field(default_factory=list)
    renotified: list[str] = field(default_factory=list)
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
            with session_scope(svc.sessions) as s:
                result = apply_provider_task(s, job_id, task, source="poll")
            if not task.status.is_final:
                # Still running at the provider: keep its slots leased.
                svc.limiter.renew(job_id)
        except Exception as exc:  # noqa: BLE001  (one bad job must not stop the safety net)
            report.errors += 1
            log.warning("reconcile: job %s: %s: %s", job_id, type(exc).__name__, exc)
            _mark_polled(svc, job_id)
            continue
        report.polled += 1
        if result.changed:
            report.changed += 1

    for name, step in (
        ("rearchived", _redispatch_archives),
        ("renotified", _redispatch_notifications),
        ("released", _release_leaked),
        ("redispatched", pump),
    ):
        try:
            setattr(report, name, step(svc))
        except Exception as exc:  # noqa: BLE001
            report.errors += 1
            log.warning("reconcile: %s failed: %s: %s", name, type(exc).__name__, exc)
    return report


def _mark_polled(svc: Services, job_id: str) -> None:
    # A job whose poll fails goes to the back of the line instead of blocking the others.
    try:
        with session_scope(svc.sessions) as s:
            s.execute(update(Job).where(Job.id == job_id).values(last_polled_at=utcnow()))
    except Exception as exc:  # noqa: BLE001
        log.warning("reconcile: could not mark job %s polled: %s", job_id, type(exc).__name__)


def _redispatch_archives(svc: Services) -> list[str]:
    """Succeeded jobs nobody is archiving (their message was lost with a killed worker)."""
    if svc.publish is None:
        return []
    now = utcnow()
    before = now - timedelta(seconds=svc.settings.stuck_archive_seconds)
    with session_scope(svc.sessions) as s:
        ids = list(
            s.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.SUCCEEDED, Job.updated_at <= before, _unclaimed(now))
                .order_by(Job.updated_at)
                .limit(100)
            )
        )
    for job_id in ids:
        svc.publish("archive_job", [job_id])
    return ids


def _redispatch_notifications(svc: Services) -> list[str]:
    """Downstream deliveries whose retry message was lost, and final jobs never notified."""
    if svc.publish is None:
        return []
    now = utcnow()
    grace = now - timedelta(seconds=STUCK_NOTIFY_SECONDS)
    with session_scope(svc.sessions) as s:
        due = set(
            s.scalars(
                select(Notification.job_id)
                .where(
                    Notification.delivered_at.is_(None),
                    Notification.next_attempt_at < grace,
                    Notification.created_at > now - GIVE_UP_AFTER,
                )
                .limit(100)
            )
        )
        never = set(
            s.scalars(
                select(Job.id)
                .outerjoin(Notification, Notification.job_id == Job.id)
                .where(
                    Job.webhook_url.is_not(None),
                    Job.status.in_([JobStatus.ARCHIVED, JobStatus.FAILED]),
                    Job.finished_at < grace,
                    Job.finished_at > now - GIVE_UP_AFTER,
                    Notification.id.is_(None),
                )
                .limit(100)
            )
        )
    ids = sorted(due | never)
    for job_id in ids:
        svc.publish("notify", [job_id])
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


def at_risk_query(risk_before: datetime) -> Select[int]:
    """Images of live jobs not archived although the provider made them before `risk_before`.

    Images of failed jobs are out: nothing will archive them, alerting forever helps nobody.
    """
    return (
        select(func.count())
        .select_from(Image)
        .join(Job, Job.id == Image.job_id)
        .where(
            Image.status == ImageStatus.PENDING,
            Image.provider_created_at <= risk_before,
            Job.status == JobStatus.SUCCEEDED,
        )
    )


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
            .where(
                Image.status == ImageStatus.PENDING, Job.status == JobStatus.SUCCEEDED, _unclaimed(utcnow())
            )
            .group_by(Image.job_id)
            .order_by(func.min(Image.provider_created_at))
            .limit(limit)
        ).all()
        pending = s.scalar(select(func.count()).select_from(Image).where(Image.status == ImageStatus.PENDING))
        at_risk = s.scalar(at_risk_query(risk_before))
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
