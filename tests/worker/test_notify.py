"""Downstream webhooks: a receiver verifies the Standard Webhooks signature and gets S3 locations;
failures are retried and every attempt is visible in `GET /v1/jobs/{id}`."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug import Request, Response

from kling.callbacks import verify_callback_signature
from models.db import make_engine, session_scope
from models.documents import EVENT_IMAGE_FIELDS, EVENT_JOB_FIELDS
from models.settings import Settings
from models.statemachine import create_job, transition
from models.tables import Image, Job, Notification
from tests.conftest import TEST_API_TOKEN, TEST_WEBHOOK_SECRET
from tests.worker.conftest import RECEIVER_HOSTS
from webhook import create_app
from worker import repair
from worker.claims import db_now
from worker.limiter import RedisSlotLimiter
from worker.notify import notify_job, take_lease
from worker.outcome import Step
from worker.services import Services

pytestmark = pytest.mark.integration
NOTIFY_SECRET = TEST_WEBHOOK_SECRET


def archived_job(s: Session, webhook_url: str) -> str:
    job = create_job(
        s, {"prompt": "p", "n": 1}, provider="kling", webhook_url=webhook_url, metadata={"k": "v"}
    ).job
    transition(s, job, "submitted", source="worker", provider_task_id=f"t-{job.id}")
    transition(s, job, "succeeded", source="callback")
    s.add(
        Image(
            job_id=job.id,
            index=0,
            source_url="https://cdn.klingai.com/expiring.png",
            status="archived",
            s3_bucket="kling-archive",
            s3_key=f"images/{job.id}/0.png",
            sha256="ab" * 32,
            bytes=1234,
            content_type="image/png",
        )
    )
    s.flush()
    transition(s, job, "archived", source="archiver")
    return job.id


def test_receiver_verifies_signature_and_gets_s3_locations(svc: Services, httpserver: HTTPServer) -> None:
    received: list[Request] = []

    def handler(request: Request) -> Response:
        received.append(request)
        return Response("ok", status=200)

    httpserver.expect_request("/hook", method="POST").respond_with_handler(handler)
    with session_scope(svc.sessions) as s:
        job_id = archived_job(s, httpserver.url_for("/hook"))

    assert notify_job(svc, job_id).step is Step.DONE
    (request,) = received
    body = request.get_data()
    verify_callback_signature(NOTIFY_SECRET, dict(request.headers), body)
    event = json.loads(body)
    assert event["type"] == "job.archived"
    assert request.headers["webhook-id"] == f"msg_{job_id}_job.archived"
    data = event["data"]
    assert (data["id"], data["status"], data["metadata"]) == (job_id, "archived", {"k": "v"})
    (image,) = data["images"]
    assert image["s3_uri"] == f"s3://kling-archive/images/{job_id}/0.png"
    assert image["sha256"] == "ab" * 32
    # Never the provider's URL: it is deleted after 30 days.
    assert "expiring" not in body.decode()
    assert (tuple(data), tuple(image)) == (EVENT_JOB_FIELDS, EVENT_IMAGE_FIELDS)
    # The job as the API shows it, timestamps in the same format.
    shown = (
        create_app(svc.settings)
        .test_client()
        .get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {TEST_API_TOKEN}"})
        .get_json()
    )
    # Outputs are shown by their S3 location in events, by their source too in the API.
    assert {k: shown[k] for k in EVENT_JOB_FIELDS if k not in ("images", "outputs")} == {
        k: v for k, v in data.items() if k not in ("images", "outputs")
    }
    assert data["outputs"] == [{**image, "type": "image", "duration": None}]
    assert image["archived_at"] == shown["images"][0]["archived_at"]
    assert event["timestamp"].endswith("+00:00")

    # Delivered once: running the task again sends nothing.
    assert notify_job(svc, job_id).step is Step.DONE
    assert len(received) == 1


def test_failures_are_retried_and_attempts_are_visible(svc: Services, httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/hook").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/hook").respond_with_data("ok", status=204)
    with session_scope(svc.sessions) as s:
        job_id = archived_job(s, httpserver.url_for("/hook"))

    first = notify_job(svc, job_id)
    assert first.step is Step.RETRY and first.retry_in > 0
    with session_scope(svc.sessions) as s:  # the retry's countdown has run out
        s.execute(
            update(Notification).where(Notification.job_id == job_id).values(next_attempt_at=db_now(-1))
        )
    second = notify_job(svc, job_id)
    assert second.step is Step.DONE

    app = create_app(svc.settings)
    answer = app.test_client().get(
        f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {TEST_API_TOKEN}"}
    )
    assert answer.status_code == 200
    (note,) = answer.get_json()["notifications"]
    assert note["attempts"] == 2
    assert note["last_status"] == 204
    assert note["delivered_at"] is not None


def test_jobs_without_webhook_or_not_final_send_nothing(svc: Services, httpserver: HTTPServer) -> None:
    with session_scope(svc.sessions) as s:
        quiet = create_job(s, {"prompt": "p"}, provider="kling").job.id
        running = create_job(
            s, {"prompt": "p"}, provider="kling", webhook_url=httpserver.url_for("/hook")
        ).job.id
    assert notify_job(svc, quiet).step is Step.DONE
    assert notify_job(svc, running).step is Step.DONE
    assert httpserver.log == []
    with session_scope(svc.sessions) as s:
        assert s.get(Job, running).status == "queued"  # type: ignore[union-attr]


def test_an_attempt_that_died_mid_flight_is_sent_again_once_its_lease_runs_out(
    committed_pg_url: str, httpserver: HTTPServer, redis_client: Any, redis_key_prefix: str
) -> None:
    settings = Settings(
        database_url=committed_pg_url,
        notify_secret=NOTIFY_SECRET,
        api_token=TEST_API_TOKEN,
        stuck_notify_seconds=0,  # re-send as soon as a row is due
        notify_allowed_hosts=RECEIVER_HOSTS,
    )
    engine = make_engine(committed_pg_url)
    published: list[tuple[str, list[Any]]] = []
    svc = Services(
        settings,
        engine=engine,
        limiter=RedisSlotLimiter(redis_client, limit=5, lease_seconds=60, key_prefix=redis_key_prefix),
        publish=lambda name, args: published.append((name, args)),
    )
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok", status=200)
    with session_scope(svc.sessions) as s:
        short, long = (
            archived_job(s, httpserver.url_for("/hook")),
            archived_job(s, httpserver.url_for("/hook")),
        )
    published.clear()  # the notify messages of the jobs' own outbox rows: lost, say

    # Two attempts take their leases the way notify_job does, then die before their POST.
    lease_ends = {}
    for job_id, seconds in ((short, 3.0), (long, 3600.0)):
        with session_scope(svc.sessions) as s:
            note = Notification(job_id=job_id, event="job.archived")
            s.add(note)
            s.flush()
            assert take_lease(s, note.id, seconds)
        with session_scope(svc.sessions) as s:
            lease_ends[job_id] = s.scalar(
                select(Notification.next_attempt_at).where(Notification.job_id == job_id)
            )

    # While a lease is live no other attempt sends, and reconcile leaves the row alone.
    assert notify_job(svc, short).detail == "another attempt holds this delivery"
    report = repair.reconcile(svc)
    with session_scope(svc.sessions) as s:
        still_leased = s.scalar(select(db_now())) < lease_ends[short]
    assert still_leased, "the machine stalled past the 3 s lease; nothing was checked"
    assert short not in report.renotified and long not in report.renotified
    assert httpserver.log == []

    # Once the short lease ran out (by the database's clock), reconcile sends the row again.
    deadline = time.monotonic() + 30
    while short not in repair.reconcile(svc).renotified:
        assert time.monotonic() < deadline, "the expired lease was never re-dispatched"
        time.sleep(0.1)
    assert ("notify", [short]) in published
    assert all(args != [long] for _, args in published)  # a live lease never is

    # The re-dispatched message delivers it, once.
    assert notify_job(svc, short).step is Step.DONE
    assert len(httpserver.log) == 1
    with session_scope(svc.sessions) as s:
        note = s.scalars(select(Notification).where(Notification.job_id == short)).one()
        assert (note.attempts, note.last_status, note.next_attempt_at) == (1, 200, None)
        assert note.delivered_at is not None
    assert short not in repair.reconcile(svc).renotified
    engine.dispose()
