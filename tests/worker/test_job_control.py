"""Job control in the worker (worker/submit.py, worker/repair.py): a cancelled or expired job is
never created at the provider, even by a run already under way, and one whose create may exist is
looked up first: a task found runs on (it was paid for), none found ends the job.

Real parts: PostgreSQL, the Redis limiter and the simulator over HTTP (`harness`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from kling import ImageRequest
from models.base import utcnow
from models.db import session_scope
from models.job_control import CancelOutcome, cancel_job
from models.tables import Job
from tests.worker.harness import Harness
from worker import repair, submit
from worker.outcome import Step

pytestmark = pytest.mark.integration


def set_columns(harness: Harness, job_id: str, **values: object) -> None:
    with session_scope(harness.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def cancel(harness: Harness, job_id: str) -> CancelOutcome:
    with session_scope(harness.svc.sessions) as s:
        return cancel_job(s, job_id, utcnow())[0]


def test_a_cancel_asked_while_a_run_held_the_job_stops_the_next_create(harness: Harness) -> None:
    job_id = harness.job()
    set_columns(harness, job_id, claim_token="run-1")  # a run owns it (it may be creating)
    assert cancel(harness, job_id) is CancelOutcome.REQUESTED
    set_columns(harness, job_id, claim_token=None)  # that run gave it back without a create
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    job = harness.get(job_id)
    assert (job.status, job.provider_task_id) == ("cancelled", None)
    assert harness.sim.create_count == 0 and harness.svc.limiter.holders() == {}


def test_the_reconciler_ends_a_never_sent_job_whose_cancel_was_asked(harness: Harness) -> None:
    # It need not wait for a free slot (and a submit run) to end.
    job_id = harness.job()
    set_columns(harness, job_id, claim_token="run-1")
    assert cancel(harness, job_id) is CancelOutcome.REQUESTED
    set_columns(harness, job_id, claim_token=None)
    assert job_id in repair.reconcile(harness.svc).expired
    assert harness.get(job_id).status == "cancelled" and harness.sim.create_count == 0


@pytest.mark.parametrize("task_exists", [True, False])
def test_a_cancelled_job_whose_create_may_exist_is_looked_up_first(
    harness: Harness, task_exists: bool
) -> None:
    job_id = harness.job()
    set_columns(harness, job_id, create_attempts=1, account="default")  # an ambiguous create
    if task_exists:
        made = harness.svc.provider.create_image(
            ImageRequest.from_params({"prompt": "a lighthouse"}), external_task_id=job_id
        )
    assert cancel(harness, job_id) is CancelOutcome.REQUESTED
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    job = harness.get(job_id)
    if task_exists:
        # Paid for: it runs on and will be archived; the cancel stays on record.
        assert job.provider_task_id == made.task_id and job.status in ("submitted", "processing")
        assert job.cancel_requested_at is not None
        assert harness.svc.limiter.holders() == {job_id: 1}
    else:
        assert (job.status, job.provider_task_id) == ("cancelled", None)
        assert harness.svc.limiter.holders() == {}
    assert harness.sim.create_count == (1 if task_exists else 0)


def test_the_reconciler_expires_queued_jobs_past_their_deadline_that_were_never_sent(
    harness: Harness,
) -> None:
    past, future, maybe_sent = harness.job(), harness.job(), harness.job()
    set_columns(harness, past, deadline_at=utcnow() - timedelta(seconds=1))
    set_columns(harness, future, deadline_at=utcnow() + timedelta(hours=1))
    set_columns(harness, maybe_sent, deadline_at=utcnow() - timedelta(seconds=1), create_attempts=1)
    assert harness.svc.limiter.acquire("running", harness.svc.limiter.limit)
    assert not harness.svc.limiter.acquire(past, 1)  # it waits for a slot, in the wait queue
    report = repair.reconcile(harness.svc)
    assert report.expired == [past]
    assert past not in harness.svc.limiter.waiting()
    harness.svc.limiter.release("running")
    assert [harness.get(j).status for j in (past, future, maybe_sent)] == ["expired", "queued", "queued"]
    assert [t.to_status for t in harness.get(past).transitions] == ["queued", "expired"]
    # The one whose create may exist is settled by submit's lookup: nothing there, so it expires.
    assert submit.submit_job(harness.svc, maybe_sent).step is Step.DONE
    assert harness.get(maybe_sent).status == "expired"
    # A job that expires between the sweeps is ended by submit itself, never created.
    set_columns(harness, future, deadline_at=utcnow() - timedelta(seconds=1))
    assert submit.submit_job(harness.svc, future).step is Step.DONE
    assert harness.get(future).status == "expired"
    assert harness.sim.create_count == 0


def test_a_report_about_a_cancelled_job_changes_nothing(harness: Harness) -> None:
    from models.statemachine import apply_provider_task

    job = harness.submit_and_finish()  # a real finished task to report
    other = harness.job()
    assert cancel(harness, other) is CancelOutcome.CANCELLED
    task = harness.svc.provider.get_image(job.provider_task_id)
    object.__setattr__(task, "external_task_id", other)
    object.__setattr__(task, "task_id", "t-unrelated")
    with session_scope(harness.svc.sessions) as s:
        result = apply_provider_task(s, other, task, source="poll")
    assert not result.changed and harness.get(other).status == "cancelled"


def test_the_pump_dispatches_higher_priorities_first(harness: Harness) -> None:
    from models.statemachine import create_job
    from worker import slots

    made = {}
    with session_scope(harness.svc.sessions) as s:
        for priority in ("low", "normal", "high"):
            made[priority] = create_job(s, {"prompt": "p"}, provider="kling", priority=priority).job.id
    order = [j for j in slots.pump(harness.svc) if j in made.values()]
    assert order == [made["high"], made["normal"], made["low"]]
    # The limiter queues them the same way: the high one's ticket is ahead of the others'.
    assert submit.submit_job(harness.svc, made["high"]).step is Step.DONE
