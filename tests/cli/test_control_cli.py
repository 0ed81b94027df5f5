"""`klingctl cancel` and `klingctl retry` on a real SQLite database with the in-memory broker."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, update

from models.db import make_sessionmaker, session_scope
from models.tables import Job
from tests.cli.conftest import Run
from tests.cli.test_commands import MEMORY, drain, jobs_in

pytestmark = pytest.mark.integration


def submitted(cli: Run, url: str) -> str:
    hook = "https://example.com/hook"
    args = ["submit", "a lighthouse", "--webhook-url", hook]
    result = cli(args, DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_cancel_a_queued_job_then_retry_it(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    job_id = submitted(cli, url)
    drain()
    result = cli(["cancel", job_id], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{job_id}: cancelled (never sent to the provider, nothing billed)"
    [job] = jobs_in(engine)
    assert job.status == "cancelled"
    assert drain() == [("kling.notify", [job_id])]  # its job.cancelled event

    again = cli(["cancel", job_id], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert again.exit_code == 0 and "cancelled" in again.stdout

    retried = cli(["retry", job_id], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert retried.exit_code == 0, retried.output
    new_id = retried.stdout.strip()
    new = next(j for j in jobs_in(engine) if j.id == new_id)
    assert (new.status, new.retry_of, new.params) == ("queued", job_id, job.params)
    assert drain() == [("kling.submit_job", [new_id])]


def test_cancel_of_a_job_kling_may_have_says_it_runs_on(cli: Run, fresh_sqlite: tuple[str, Engine]) -> None:
    url, engine = fresh_sqlite
    job_id = submitted(cli, url)
    with session_scope(make_sessionmaker(engine)) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="processing", create_attempts=1))
    result = cli(["cancel", job_id], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.stdout and "still archived" in result.stdout
    [job] = jobs_in(engine)
    assert job.status == "processing" and job.cancel_requested_at is not None


@pytest.mark.parametrize(
    ("command", "status", "message"),
    [
        ("cancel", "archived", "already ended (archived)"),
        ("retry", "archived", "cannot be retried"),
        ("retry", "queued", "cannot be retried"),
    ],
)
def test_refusals_are_one_line_exit_1(
    cli: Run, fresh_sqlite: tuple[str, Engine], command: str, status: str, message: str
) -> None:
    url, engine = fresh_sqlite
    job_id = submitted(cli, url)
    with session_scope(make_sessionmaker(engine)) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status))
    result = cli([command, job_id], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 1 and message in result.output
    unknown = cli([command, "00000000-0000-4000-8000-000000000000"], DATABASE_URL=url)
    assert unknown.exit_code == 1 and "no job" in unknown.output


def test_submit_takes_priority_deadline_and_webhook_events(
    cli: Run, fresh_sqlite: tuple[str, Engine]
) -> None:
    url, engine = fresh_sqlite
    args = ["submit", "a lighthouse", "--priority", "high", "--deadline", "60"]
    args += ["--webhook-url", "https://example.com/hook", "--webhook-event", "job.failed"]
    args += ["--webhook-event", "job.submitted"]
    result = cli(args, DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert result.exit_code == 0, result.output
    [job] = jobs_in(engine)
    assert (job.priority, job.webhook_events) == ("high", ["job.submitted", "job.failed"])
    assert job.deadline_at is not None and job.queue_at is not None and job.queue_at < job.created_at
    # An event without a URL to send it to is bad input: one line, exit 2, nothing written.
    bad = cli(["submit", "x", "--webhook-event", "job.failed"], DATABASE_URL=url, CELERY_BROKER_URL=MEMORY)
    assert bad.exit_code == 2 and "webhook_events" in bad.output and len(jobs_in(engine)) == 1
