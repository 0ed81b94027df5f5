"""Event subscriptions (models/events.py, worker/notify.py, worker/endpoints.py,
webhook/deliveries.py): a webhook_url hears the moves it chose, every attempt is recorded, failures
follow Svix's schedule, an endpoint failing for 5 days is no longer called (with an alert), and a
replay sends again. Real PostgreSQL (committed) and an HTTP receiver."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select, update

from models.base import utcnow
from models.db import make_engine, session_scope
from models.events import (
    DEFAULT_EVENTS,
    EVENTS,
    MAX_ATTEMPTS,
    RETRY_SCHEDULE,
    parse_webhook_events,
    retry_delay,
)
from models.outbox import ALERT, NOTIFY, Outbox
from models.settings import Settings
from models.statemachine import create_job, transition
from models.tables import DeliveryAttempt, Job, Notification, WebhookEndpoint
from tests.conftest import TEST_API_TOKEN, TEST_WEBHOOK_SECRET
from webhook import create_app
from worker import endpoints, repair
from worker.notify import notify_job
from worker.outcome import Step
from worker.services import Services

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TEST_API_TOKEN}"}


@pytest.fixture
def svc(committed_pg_url: str) -> Iterator[Services]:
    settings = Settings(
        database_url=committed_pg_url,
        notify_secret=TEST_WEBHOOK_SECRET,
        api_token=TEST_API_TOKEN,
        notify_allowed_hosts=("localhost",),
        alert_webhook_url="https://alerts.example/",
    )
    engine = make_engine(committed_pg_url)
    services = Services(settings, engine=engine)
    published: list[tuple[str, list[object]]] = []
    services.publish = lambda name, args: published.append((name, args))
    services.published = published  # type: ignore[attr-defined]
    yield services
    engine.dispose()


def job_with(svc: Services, url: str, events: list[str] | None, moves: list[str]) -> str:
    with session_scope(svc.sessions) as s:
        job = create_job(s, {"prompt": "p"}, provider="kling", webhook_url=url, webhook_events=events).job
        for to in moves:
            extra = {"provider_task_id": f"t-{job.id}"} if to == "submitted" else {}
            transition(s, job, to, source="worker", **extra)
        return job.id


def outbox_notifies(svc: Services, job_id: str) -> int:
    with session_scope(svc.sessions) as s:
        rows = s.scalars(select(Outbox.args).where(Outbox.task == NOTIFY)).all()
    return sum(1 for args in rows if args == [job_id])


# --- the rules ----------------------------------------------------------------------------------------
def test_webhook_events_are_checked_and_kept_in_life_order() -> None:
    assert parse_webhook_events(None, has_url=True) == (None, [])
    assert parse_webhook_events(["job.failed", "job.submitted"], has_url=True)[0] == [
        "job.submitted",
        "job.failed",
    ]
    for bad, field in [
        ([], "webhook_events"),
        ("job.failed", "webhook_events"),
        (["job.failed", "job.failed"], "webhook_events"),
        (["job.failed", "job.bogus"], "webhook_events[1]"),
    ]:
        assert [e.field for e in parse_webhook_events(bad, has_url=True)[1]] == [field]
    assert parse_webhook_events(["job.failed"], has_url=False)[1][0].rule == "requires"
    assert set(EVENTS) > DEFAULT_EVENTS


def test_the_retry_schedule_is_svixs_and_ends_after_eight_attempts() -> None:
    assert [retry_delay(n) for n in range(1, MAX_ATTEMPTS + 1)] == [*RETRY_SCHEDULE, None]
    assert RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000) and MAX_ATTEMPTS == 8


# --- delivery -----------------------------------------------------------------------------------------
def test_a_subscriber_hears_each_chosen_move_once_in_order(svc: Services, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    url = httpserver.url_for("/hook")
    job_id = job_with(svc, url, ["job.submitted", "job.succeeded", "job.archived"], ["submitted"])
    # A move it chose queues a delivery with the move; one it did not choose queues none.
    assert outbox_notifies(svc, job_id) == 1
    assert notify_job(svc, job_id).step is Step.DONE
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        transition(s, job, "processing", source="callback")
        transition(s, job, "succeeded", source="callback")
        transition(s, job, "archived", source="archiver")
    assert outbox_notifies(svc, job_id) == 3  # submitted, succeeded, archived; not processing
    assert notify_job(svc, job_id).step is Step.DONE
    types = [json.loads(r.get_data())["type"] for r, _ in httpserver.log]
    assert types == ["job.submitted", "job.succeeded", "job.archived"]
    assert notify_job(svc, job_id).step is Step.DONE and len(httpserver.log) == 3  # nothing twice


def test_every_attempt_is_recorded_and_retried_on_the_schedule(svc: Services, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("no", status=503)
    job_id = job_with(svc, httpserver.url_for("/hook"), None, ["failed"])
    outcome = notify_job(svc, job_id)
    assert outcome.step is Step.RETRY and RETRY_SCHEDULE[0] <= outcome.retry_in <= RETRY_SCHEDULE[0] + 2
    with session_scope(svc.sessions) as s:
        note = s.scalars(select(Notification).where(Notification.job_id == job_id)).one()
        [attempt] = s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.notification_id == note.id)).all()
        assert (note.event, note.attempts, attempt.attempt, attempt.status, attempt.error) == (
            "job.failed",
            1,
            1,
            503,
            "http_5xx",
        )
        assert attempt.latency_ms is not None and attempt.latency_ms >= 0
        # The last attempt of the schedule fails: given up, no retry.
        s.execute(
            update(Notification)
            .where(Notification.id == note.id)
            .values(attempts=MAX_ATTEMPTS - 1, next_attempt_at=None)
        )
    assert notify_job(svc, job_id).step is Step.FAILED
    assert notify_job(svc, job_id).detail == f"gave up after {MAX_ATTEMPTS} attempts"
    assert len(httpserver.log) == 2


def test_an_endpoint_failing_for_five_days_is_no_longer_called_and_a_replay_enables_it(
    svc: Services, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("no", status=500)
    url = httpserver.url_for(f"/hook?t={secrets.token_hex(4)}")
    first = job_with(svc, url, None, ["failed"])
    assert notify_job(svc, first).step is Step.RETRY
    with session_scope(svc.sessions) as s:
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.url_sha256 == endpoints.url_key(url))
            .values(failing_since=utcnow() - timedelta(days=5, seconds=1))
        )
    second = job_with(svc, url, None, ["failed"])
    assert notify_job(svc, second).step is Step.RETRY  # this failure passes 5 days: disabled
    alerts = [args[0] for name, args in svc.published if name == ALERT]  # type: ignore[attr-defined]
    assert [a["type"] for a in alerts] == ["delivery.disabled"]
    assert alerts[0]["data"]["url_sha256"] == endpoints.url_key(url) and "t=" not in json.dumps(alerts)
    calls = len(httpserver.log)
    third = job_with(svc, url, None, ["failed"])
    assert notify_job(svc, third).detail == "endpoint disabled"
    assert len(httpserver.log) == calls  # not called
    assert third not in repair.reconcile(svc).renotified  # nor re-sent by the safety net

    # A person replays a delivery: the endpoint is enabled and the event goes out again.
    httpserver.clear()
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    client = create_app(svc.settings).test_client()
    before = outbox_notifies(svc, third)
    replayed = client.post(f"/v1/jobs/{third}/deliveries/job.failed/replay", headers=AUTH)
    assert replayed.status_code == 202 and replayed.get_json()["state"] == "pending"
    assert outbox_notifies(svc, third) == before + 1  # the replay queued its delivery
    assert notify_job(svc, third).step is Step.DONE and len(httpserver.log) == 1
    shown = client.get(f"/v1/jobs/{third}/deliveries", headers=AUTH).get_json()
    assert shown["endpoint"]["disabled_at"] is None and shown["endpoint"]["failing_since"] is None
    [delivery] = shown["deliveries"]
    assert (delivery["event"], delivery["state"], delivery["attempts"]) == ("job.failed", "delivered", 1)
    assert [a["attempt"] for a in delivery["attempt_log"]] == [1]  # the first try never went out
    assert delivery["attempt_log"][0]["status"] == 200


def test_deliveries_api_refusals(svc: Services) -> None:
    client = create_app(svc.settings).test_client()
    job_id = job_with(svc, "https://hooks.example.org/x", None, [])
    assert client.get(f"/v1/jobs/{job_id}/deliveries", headers=AUTH).get_json()["deliveries"] == []
    assert client.post(f"/v1/jobs/{job_id}/deliveries/job.bogus/replay", headers=AUTH).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/deliveries/job.failed/replay", headers=AUTH).status_code == 409
    assert client.get(f"/v1/jobs/{job_id}/deliveries").status_code == 401
    assert (
        client.get("/v1/jobs/00000000-0000-4000-8000-000000000000/deliveries", headers=AUTH).status_code
        == 404
    )
