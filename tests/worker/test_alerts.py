"""Account alerts: a pause or a resume is a signed event to ALERT_WEBHOOK_URL, retried on failure."""

from __future__ import annotations

import json
import time
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from kling.callbacks import verify_callback_signature
from models.outbox import ALERT
from models.settings import Settings
from tests.conftest import TEST_WEBHOOK_SECRET
from worker import alerts
from worker.accounts import AccountState
from worker.outcome import Step
from worker.services import Services


def _services(url: str | None, published: list[tuple[str, list[Any]]]) -> Services:
    settings = Settings(alert_webhook_url=url, notify_secret=TEST_WEBHOOK_SECRET)
    return Services(settings, publish=lambda name, args: published.append((name, args)))


def test_a_pause_is_queued_as_an_event_only_when_a_url_is_set() -> None:
    state = AccountState("main", paused=True, code=1102, message="pack used up", since=1_800_000_000.0)
    published: list[tuple[str, list[Any]]] = []
    alerts.account_changed(_services(None, published), alerts.PAUSED, state)
    assert published == []
    alerts.account_changed(_services("https://alerts.example/hook", published), alerts.PAUSED, state)
    [(name, (payload, msg_id))] = published
    assert name == ALERT and msg_id == "msg_main_account.paused_1800000000000"
    assert payload["type"] == "account.paused"
    assert payload["data"] == {
        "account": "main",
        "state": "paused",
        "code": 1102,
        "message": "pack used up",
        "since": "2027-01-15T08:00:00.000Z",
    }


def test_the_event_arrives_signed_and_a_failed_delivery_is_retried(httpserver: HTTPServer) -> None:
    seen: list[Request] = []
    answers = iter([Response("busy", status=503), Response("ok")])

    def handler(request: Request) -> Response:
        seen.append(request)
        return next(answers)

    httpserver.expect_request("/alerts", method="POST").respond_with_handler(handler)
    svc = _services(httpserver.url_for("/alerts"), [])
    payload = alerts.alert_payload(alerts.RESUMED, AccountState("main", paused=False), time.time())
    first = alerts.send_alert(svc, payload, "msg_main_resumed_1")
    assert first.step is Step.RETRY and first.detail == "http_5xx" and first.retry_in > 0
    assert alerts.send_alert(svc, payload, "msg_main_resumed_1", attempt=1).step is Step.DONE
    assert len(seen) == 2
    body = seen[-1].get_data()
    verify_callback_signature(TEST_WEBHOOK_SECRET, dict(seen[-1].headers), body)
    assert json.loads(body)["data"] == {"account": "main", "state": "active"}
