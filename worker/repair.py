"""Repair: the periodic safety nets. `reconcile` polls quiet jobs and re-sends lost messages;
`sweep` re-queues whatever is still not archived, counts the images at risk and prunes old rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Select, func, or_, select

from models.base import utcnow
from models.db import session_scope
from models.enums import ImageStatus, JobStatus
from models.events import MAX_ATTEMPTS
from models.job_control import expire_overdue
from models.outbox import ARCHIVE_JOB, NOTIFY
from models.statemachine import apply_provider_task
from models.tables import Image, Job, Notification
from worker import metrics
from worker.claims import db_now, unclaimed
from worker.notify import GIVE_UP_AFTER
from worker.polling import mark_polled
from worker.probe import probe_paused
from worker.pruning import PruneReport, prune
from worker.services import Services
from worker.slots import pump

if TYPE_CHECKING:
    from celery import Celery

    from worker.tasks import KlingTask, Schedule

log = logging.getLogger(__name__)


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
    resumed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


def reconcile(svc: Services, *, limit: int = 200) -> ReconcileReport:
    """Poll the provider for in-flight jobs that went quiet, and repair lost messages.

    This is the safety net of docs/architecture.md rule 2: with every callback lost, or no public URL at all,
    jobs still finish through here.
    """
    report = ReconcileReport()
    cutoff = utcnow() - timedelta(seconds=svc.settings.reconcile_after_seconds)
    with session_scope(svc.sessions) as s:
        quiet = s.execute(
            select(Job.id, Job.provider_task_id, Job.provider, Job.account, Job.kind)
            .where(
                Job.status.in_([JobStatus.SUBMITTED, JobStatus.PROCESSING]),
                Job.updated_at <= cutoff,
                (Job.last_polled_at.is_(None)) | (Job.last_polled_at <= cutoff),
            )
            .order_by(Job.updated_at)
            .limit(limit)
        ).all()
    for job_id, task_id, provider_name, account, kind in quiet:
        try:
            provider = svc.provider_for_account(account, provider_name)
            if task_id:
                task = provider.get_task(kind, task_id)
            else:
                task = provider.get_task(kind, external_task_id=job_id)
            with session_scope(svc.sessions) as s:
                result = apply_provider_task(s, job_id, task, source="poll")
            if not task.status.is_final:
                # Still running at the provider: keep its slots leased.
                svc.renew(job_id, account)
        except Exception as exc:  # noqa: BLE001  (one bad job must not stop the safety net)
            report.errors += 1
            log.warning("reconcile: job %s: %s: %s", job_id, type(exc).__name__, exc)
            mark_polled(svc, job_id)
            continue
        report.polled += 1
        if result.changed:
            report.changed += 1

    for name, step in (
        ("expired", _expire_overdue),
        ("resumed", probe_paused),
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


def _expire_overdue(svc: Services) -> list[str]:
    """Queued jobs past their `deadline_at` that were never sent become `expired` (their
    `job.expired` event goes out after the commit)."""
    with session_scope(svc.sessions) as s:
        expired = expire_overdue(s, utcnow())
    for job_id in expired:
        svc.release(job_id)  # out of every wait queue: a starving waiter would reserve slots
    if expired:
        log.info("reconcile: %d queued jobs passed their deadline", len(expired))
    return expired


def _redispatch_archives(svc: Services) -> list[str]:
    """Succeeded jobs nobody is archiving (their message was lost with a killed worker)."""
    if svc.publish is None:
        return []
    before = utcnow() - timedelta(seconds=svc.settings.stuck_archive_seconds)
    with session_scope(svc.sessions) as s:
        ids = list(
            s.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.SUCCEEDED, Job.updated_at <= before, unclaimed())
                .order_by(Job.updated_at)
                .limit(100)
            )
        )
    for job_id in ids:
        svc.publish(ARCHIVE_JOB, [job_id])
    return ids


def _redispatch_notifications(svc: Services) -> list[str]:
    """Downstream deliveries whose retry message was lost or whose attempt died mid-flight (its
    lease ran out), and final jobs never notified.

    A row is sent again `STUCK_NOTIFY_SECONDS` after it fell due (its own retry message goes
    first); `next_attempt_at` is compared by the database's clock, which wrote it.
    """
    if svc.publish is None:
        return []
    now = utcnow()
    stuck = svc.settings.stuck_notify_seconds
    grace = now - timedelta(seconds=stuck)
    with session_scope(svc.sessions) as s:
        due = set(
            s.scalars(
                select(Notification.job_id)
                .where(
                    Notification.delivered_at.is_(None),
                    or_(
                        Notification.next_attempt_at < db_now(-stuck),
                        # Rows written before attempts took a lease (NULL while in flight).
                        Notification.next_attempt_at.is_(None) & (Notification.created_at < grace),
                    ),
                    Notification.created_at > now - GIVE_UP_AFTER,
                    Notification.attempts < MAX_ATTEMPTS,
                    # Ended by a disabled endpoint: only a replay sends it again.
                    or_(Notification.last_error.is_(None), Notification.last_error != "disabled"),
                )
                .order_by(Notification.next_attempt_at)
                .limit(100)
            )
        )
        never = set(
            s.scalars(
                select(Job.id)
                .outerjoin(Notification, Notification.job_id == Job.id)
                .where(
                    Job.webhook_url.is_not(None),
                    Job.status.in_([s for s in JobStatus if s.is_terminal]),
                    # Default subscriptions hear every end; a chosen set may hear none of it.
                    Job.webhook_events.is_(None),
                    Job.finished_at < grace,
                    Job.finished_at > now - GIVE_UP_AFTER,
                    Notification.id.is_(None),
                )
                .limit(100)
            )
        )
    ids = sorted(due | never)
    for job_id in ids:
        svc.publish(NOTIFY, [job_id])
    return ids


def _release_leaked(svc: Services) -> list[str]:
    """Leases held for jobs the provider is done with (a lost release message)."""
    holders = [h for limiter in svc.limiters().values() for h in limiter.holders()]
    if not holders:
        return []
    with session_scope(svc.sessions) as s:
        done = list(
            s.scalars(
                select(Job.id).where(
                    Job.id.in_(holders),
                    Job.status.in_([JobStatus.SUCCEEDED, *(s for s in JobStatus if s.is_terminal)]),
                )
            )
        )
        known = set(s.scalars(select(Job.id).where(Job.id.in_(holders))))
    gone = [h for h in holders if h not in known]
    for job_id in [*done, *gone]:
        svc.release(job_id)
    return [*done, *gone]


# --- sweep ------------------------------------------------------------------------------------------
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


@dataclass
class SweepReport:
    jobs: list[str] = field(default_factory=list)
    pending_images: int = 0
    at_risk: int = 0
    # Rows deleted by this run (in a dry run: that it would delete).
    pruned: PruneReport = field(default_factory=PruneReport)


def sweep(svc: Services, *, dry_run: bool = False, limit: int = 1000) -> SweepReport:
    """Archive whatever is still not archived (oldest provider time first); count images at risk;
    then prune published outbox rows and callback events past their keep days (worker/pruning.py).

    An image is at risk when it is not archived and its provider copy is older than
    `RETENTION_DAYS - 5` days: a few more days and Kling deletes it.
    """
    settings = svc.settings
    risk_before = utcnow() - timedelta(days=settings.alert_after_days)
    with session_scope(svc.sessions) as s:
        rows = s.execute(
            select(Image.job_id, func.min(Image.provider_created_at))
            .join(Job, Job.id == Image.job_id)
            .where(Image.status == ImageStatus.PENDING, Job.status == JobStatus.SUCCEEDED, unclaimed())
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
            svc.publish(ARCHIVE_JOB, [job_id])
    now = utcnow()
    report.pruned = prune(
        svc.sessions,
        outbox_before=now - timedelta(days=settings.outbox_keep_days),
        events_before=now - timedelta(days=settings.callback_events_keep_days),
        dry_run=dry_run,
    )
    if not dry_run and (report.pruned.outbox or report.pruned.callback_events):
        log.info(
            "sweep: pruned %d outbox row(s) and %d callback event(s)",
            report.pruned.outbox,
            report.pruned.callback_events,
        )
    return report


def register(app: Celery) -> Schedule:
    """The reconcile and sweep tasks, and their places in the beat schedule."""
    # Imported here, not at the top: the web app imports this module (at_risk_query) without Celery.
    from worker.tasks import RECONCILE_TASK, SWEEP_TASK, KlingTask, every

    @app.task(bind=True, base=KlingTask, shared=False, name=RECONCILE_TASK.name)
    def reconcile_task(self: KlingTask) -> dict[str, int]:
        report = reconcile(self.services)
        return {
            "polled": report.polled,
            "changed": report.changed,
            "errors": report.errors,
            "expired": len(report.expired),
        }

    @app.task(bind=True, base=KlingTask, shared=False, name=SWEEP_TASK.name)
    def sweep_task(self: KlingTask) -> dict[str, int]:
        report = sweep(self.services)
        return {
            "jobs": len(report.jobs),
            "pending": report.pending_images,
            "at_risk": report.at_risk,
            "pruned_outbox": report.pruned.outbox,
            "pruned_callback_events": report.pruned.callback_events,
        }

    settings = app.conf.kling_settings
    return {
        "reconcile": every(RECONCILE_TASK, settings.reconcile_interval_seconds),
        "sweep": every(SWEEP_TASK, settings.sweep_interval_seconds),
    }
