"""Job control over HTTP (webhook/job_control.py, models/job_control.py): cancel, deadlines and
retries, against the real PostgreSQL (rolled back per test)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from models.base import utcnow
from models.enums import JobStatus
from models.job_control import MAX_DEADLINE_SECONDS, CancelOutcome, decide_cancel, unsubmitted_end
from models.outbox import NOTIFY
from models.rules import can_move
from models.statemachine import transition
from models.tables import Job, Outbox, Transition
from tests.api.conftest import AUTH, Api

BODY = {"prompt": "a red fox in the snow", "n": 1}


def post(api: Api, url: str, **headers: str) -> tuple[int, dict]:
    response = api.client.post(url, headers={**AUTH, **headers})
    return response.status_code, response.get_json()


def created(api: Api, **fields: object) -> str:
    response = api.create({**BODY, **fields})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def set_columns(api: Api, job_id: str, **values: object) -> None:
    api.session.execute(update(Job).where(Job.id == job_id).values(**values))
    api.session.commit()


# --- the decisions ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "attempts", "claimed", "expected"),
    [
        (JobStatus.QUEUED, 0, False, CancelOutcome.CANCELLED),
        (JobStatus.QUEUED, 0, True, CancelOutcome.REQUESTED),  # a run owns it: it may be creating
        (JobStatus.QUEUED, 1, False, CancelOutcome.REQUESTED),  # an earlier create may exist
        (JobStatus.SUBMITTED, 1, False, CancelOutcome.REQUESTED),
        (JobStatus.PROCESSING, 1, False, CancelOutcome.REQUESTED),
        (JobStatus.SUCCEEDED, 1, False, CancelOutcome.REQUESTED),
        (JobStatus.CANCELLED, 0, False, CancelOutcome.CANCELLED),
        (JobStatus.ARCHIVED, 1, False, CancelOutcome.FINAL),
        (JobStatus.FAILED, 1, False, CancelOutcome.FINAL),
        (JobStatus.EXPIRED, 0, False, CancelOutcome.FINAL),
    ],
)
def test_cancel_decision(status: JobStatus, attempts: int, claimed: bool, expected: CancelOutcome) -> None:
    assert decide_cancel(status, create_attempts=attempts, claimed=claimed) is expected


def test_only_a_queued_job_can_become_cancelled_or_expired_and_they_are_final() -> None:
    for target in (JobStatus.CANCELLED, JobStatus.EXPIRED):
        assert can_move(JobStatus.QUEUED, target)
        for later in (JobStatus.SUBMITTED, JobStatus.PROCESSING, JobStatus.SUCCEEDED, JobStatus.ARCHIVED):
            assert not can_move(later, target)
        assert target.is_terminal
        assert not any(can_move(target, other) for other in JobStatus)


def test_a_cancel_wins_over_a_deadline_and_a_future_deadline_ends_nothing() -> None:
    now = utcnow()
    assert unsubmitted_end(now, now - timedelta(seconds=1), now) is JobStatus.CANCELLED
    assert unsubmitted_end(None, now, now) is JobStatus.EXPIRED
    assert unsubmitted_end(None, now + timedelta(seconds=1), now) is None
    assert unsubmitted_end(None, None, now) is None


# --- cancel ---------------------------------------------------------------------------------------------
def test_cancelling_a_queued_job_ends_it_with_its_event_and_is_idempotent(api: Api) -> None:
    job_id = created(api, webhook_url="https://hooks.example.org/done")
    status, body = post(api, f"/v1/jobs/{job_id}/cancel")
    assert status == 200
    assert body["outcome"] == "cancelled" and "nothing billed" in body["message"]
    assert body["job"]["status"] == "cancelled" and body["job"]["cancel_requested_at"] is None
    moves = api.session.scalars(
        select(Transition.to_status).where(Transition.job_id == job_id).order_by(Transition.id)
    ).all()
    assert moves == ["queued", "cancelled"]
    # Its downstream event (job.cancelled) is queued with the move.
    assert api.session.scalar(select(Outbox.id).where(Outbox.task == NOTIFY, Outbox.args == [job_id]))
    assert post(api, f"/v1/jobs/{job_id}/cancel") == (
        200,
        {**body, "job": api.get(f"/v1/jobs/{job_id}").get_json()},
    )


def test_a_cancelled_job_leaves_the_limiters_wait_queue_at_once(api: Api) -> None:
    job_id = created(api)
    assert api.limiter.acquire("running", api.limiter.limit)
    assert not api.limiter.acquire(job_id, 1)  # as a submit run that found no slot leaves it
    assert job_id in api.limiter.waiting()
    assert post(api, f"/v1/jobs/{job_id}/cancel")[1]["outcome"] == "cancelled"
    assert job_id not in api.limiter.waiting()  # it would reserve slots once "starving"


def test_cancelling_a_job_the_provider_may_have_says_it_runs_on(api: Api) -> None:
    job_id = created(api)
    set_columns(api, job_id, create_attempts=1, claim_token="run-1")  # a run is creating it
    status, body = post(api, f"/v1/jobs/{job_id}/cancel")
    assert status == 200 and body["outcome"] == "cancel_requested"
    assert "still archived" in body["message"]
    assert body["job"]["status"] == "queued" and body["job"]["cancel_requested_at"] is not None
    # The run's create went through: the job moves on and will be archived, its request kept.
    job = api.session.get(Job, job_id)
    assert job is not None
    assert transition(api.session, job, JobStatus.SUBMITTED, source="worker", provider_task_id="t-1").changed
    api.session.commit()
    status, again = post(api, f"/v1/jobs/{job_id}/cancel")
    assert status == 200 and again["outcome"] == "cancel_requested"
    assert again["job"]["cancel_requested_at"] == body["job"]["cancel_requested_at"]  # the first ask


@pytest.mark.parametrize("final", ["archived", "failed", "expired"])
def test_cancelling_an_ended_job_is_a_conflict(api: Api, final: str) -> None:
    job_id = created(api)
    set_columns(api, job_id, status=final)
    status, body = post(api, f"/v1/jobs/{job_id}/cancel")
    assert status == 409 and final in body["error"]


def test_cancel_of_an_unknown_job_is_404_and_needs_the_token(api: Api) -> None:
    assert post(api, "/v1/jobs/00000000-0000-4000-8000-000000000000/cancel")[0] == 404
    assert post(api, "/v1/jobs/not-a-uuid/retry")[0] == 404
    assert api.client.post("/v1/jobs/00000000-0000-4000-8000-000000000000/cancel").status_code == 401


# --- deadlines ------------------------------------------------------------------------------------------
def test_deadline_seconds_sets_when_a_queued_job_expires(api: Api) -> None:
    before = utcnow()
    job_id = created(api, deadline_seconds=60)
    doc = api.get(f"/v1/jobs/{job_id}").get_json()
    job = api.session.get(Job, job_id)
    assert job is not None and job.deadline_at is not None
    assert before + timedelta(seconds=59) <= job.deadline_at <= utcnow() + timedelta(seconds=61)
    assert doc["deadline_at"] is not None and "deadline_seconds" not in doc["params"]


@pytest.mark.parametrize("value", [0, -5, 1.5, "60", True, MAX_DEADLINE_SECONDS + 1])
def test_a_bad_deadline_is_422_naming_the_field(api: Api, value: object) -> None:
    response = api.create({**BODY, "deadline_seconds": value})
    assert response.status_code == 422
    assert [f["field"] for f in response.get_json()["fields"]] == ["deadline_seconds"]


# --- retry ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ended", ["failed", "expired", "cancelled"])
def test_a_job_that_ended_without_results_can_be_retried_once_per_key(api: Api, ended: str) -> None:
    job_id = created(api, webhook_url="https://hooks.example.org/done", metadata={"sku": 7})
    set_columns(api, job_id, status=ended)
    response = api.client.post(f"/v1/jobs/{job_id}/retry", headers={**AUTH, "Idempotency-Key": "retry-1"})
    assert response.status_code == 202
    new = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{new['id']}"
    assert (new["status"], new["retry_of"], new["params"]) == ("queued", job_id, BODY)
    assert (new["webhook_url"], new["metadata"]) == ("https://hooks.example.org/done", {"sku": 7})
    again = api.client.post(f"/v1/jobs/{job_id}/retry", headers={**AUTH, "Idempotency-Key": "retry-1"})
    assert again.status_code == 200 and again.get_json()["id"] == new["id"]
    # The key of another job's retry (or create) is refused, not answered with the wrong job.
    other = created(api)
    set_columns(api, other, status="failed")
    status, body = post(api, f"/v1/jobs/{other}/retry", **{"Idempotency-Key": "retry-1"})
    assert status == 422 and body["fields"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("state", ["queued", "submitted", "archived"])
def test_only_jobs_that_ended_without_results_can_be_retried(api: Api, state: str) -> None:
    job_id = created(api)
    set_columns(api, job_id, status=state)
    status, body = post(api, f"/v1/jobs/{job_id}/retry")
    assert status == 409 and state in body["error"]


# --- priorities -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("priority", "ahead"), [("high", 600), ("normal", 0), ("low", -600), (None, 0)])
def test_priority_sets_the_jobs_place_in_the_queue(api: Api, priority: str | None, ahead: int) -> None:
    job_id = created(api, **({"priority": priority} if priority else {}))
    job = api.session.get(Job, job_id)
    assert job is not None and job.queue_at is not None
    assert job.priority == (priority or "normal")
    moved = (job.created_at - job.queue_at).total_seconds()
    assert abs(moved - ahead) < 5  # the app's clock stamps queue_at, the database's created_at
    assert api.get(f"/v1/jobs/{job_id}").get_json()["priority"] == (priority or "normal")


@pytest.mark.parametrize("value", ["urgent", 1, True, ""])
def test_a_bad_priority_is_422_naming_the_field(api: Api, value: object) -> None:
    response = api.create({**BODY, "priority": value})
    assert response.status_code == 422
    assert [f["field"] for f in response.get_json()["fields"]] == ["priority"]
