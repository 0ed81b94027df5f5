"""`klingctl cancel JOB_ID` and `klingctl retry JOB_ID`: job control from the command line, with
the API's rules (models/job_control.py) on the same database."""

from __future__ import annotations

import click
from sqlalchemy.orm import Session, sessionmaker

from klingctl.common import celery_publisher, db_handles, settings
from models.base import utcnow
from models.db import session_scope
from models.job_control import CancelOutcome, NotRetryable, cancel_job, retry_job
from models.outbox import PENDING_ROWS, OutboxEntry
from models.settings import Settings
from models.statemachine import JobNotFound
from worker.outbox import publish_rows

MESSAGES = {
    CancelOutcome.CANCELLED: "cancelled (never sent to the provider, nothing billed)",
    CancelOutcome.REQUESTED: (
        "cancel requested: the task may already be at the provider, which cannot cancel it; "
        "it runs on and its outputs are still archived"
    ),
}


@click.command()
@click.argument("job_id")
def cancel(*, job_id: str) -> None:
    """Cancel a job. A job not yet sent to Kling is cancelled; one Kling may already have runs on
    (Kling has no cancel; it was paid for) and is archived. Exit 1 when the job already ended."""
    cfg = settings()
    engine, sessions = db_handles(cfg)
    try:
        with session_scope(sessions) as s:
            try:
                outcome, job = cancel_job(s, job_id, utcnow())
            except JobNotFound:
                raise click.ClickException(f"no job {job_id}") from None
            # The job.cancelled event's row, published once this commits (as the API's hook does).
            status, outbox = job.status, list(s.info.get(PENDING_ROWS, ()))
        if outcome is CancelOutcome.FINAL:
            raise click.ClickException(f"job {job_id} already ended ({status}): nothing to cancel")
        if outcome is CancelOutcome.CANCELLED:
            _leave_wait_queues(cfg, sessions, job_id)
        _publish(cfg, sessions, outbox)
        click.echo(f"{job_id}: {MESSAGES[outcome]}")
    finally:
        engine.dispose()


@click.command()
@click.argument("job_id")
def retry(*, job_id: str) -> None:
    """Queue a new job with the request of a failed, expired or cancelled one; print its id."""
    cfg = settings()
    engine, sessions = db_handles(cfg)
    try:
        with session_scope(sessions) as s:
            try:
                created = retry_job(s, job_id)
            except JobNotFound:
                raise click.ClickException(f"no job {job_id}") from None
            except NotRetryable as exc:
                raise click.ClickException(str(exc)) from None
            new_id, outbox = created.job.id, list(created.outbox)
        _publish(cfg, sessions, outbox)
        click.echo(new_id)
    finally:
        engine.dispose()


def _leave_wait_queues(cfg: Settings, sessions: sessionmaker[Session], job_id: str) -> None:
    """As the API does: out of the limiters' wait queues now (best effort: entries lapse anyway)."""
    from worker.services import Services

    try:
        Services(cfg, sessions=sessions).release(job_id)
    except Exception as exc:  # noqa: BLE001  (the cancel is committed; this only frees sooner)
        click.echo(f"warning: wait queues not updated ({type(exc).__name__}); the entry lapses", err=True)


def _publish(cfg: Settings, sessions: sessionmaker[Session], rows: list[OutboxEntry]) -> None:
    if not rows:
        return
    _, publish = celery_publisher(cfg)
    if publish_rows(sessions, publish, rows) < len(rows):
        click.echo(
            "warning: the broker did not take the message; the beat relays it from the outbox", err=True
        )
