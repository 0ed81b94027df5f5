"""`/healthz` (liveness), `/readyz` (the database only), `/healthz?deep=1` (every dependency)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from models.settings import Settings
from tests.api.conftest import make_settings
from tests.fixtures.services import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY
from webhook import create_app
from webhook.health import DeepReport


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
def good(s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET_KEY)
    return make_settings(
        celery_broker_url="redis://127.0.0.1:6379/12",
        s3_endpoint_url=s3_endpoint,
        s3_bucket=s3_bucket,
        aws_region="us-east-1",
    )


def test_deep_health_reports_every_dependency(good: Settings) -> None:
    client = create_app(good).test_client()
    deep = client.get("/healthz?deep=1")
    assert (deep.status_code, deep.get_json()) == (
        200,
        {"status": "ok", "checks": {"database": "ok", "broker": "ok", "s3": "ok"}},
    )
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_is_the_database_only_so_a_broker_or_s3_outage_keeps_replicas_serving(good: Settings) -> None:
    broker = f"redis://127.0.0.1:{closed_port()}/0"
    bad = good.model_copy(update={"celery_broker_url": broker, "s3_bucket": "no-such-bucket-here"})
    client = create_app(bad).test_client()
    ready = client.get("/readyz")
    assert (ready.status_code, ready.get_json()) == (200, {"status": "ok", "checks": {"database": "ok"}})
    # Liveness does no I/O at all.
    assert (client.get("/healthz").status_code, client.get("/healthz").get_json()) == (200, {"status": "ok"})
    deep = client.get("/healthz?deep=true")
    checks = deep.get_json()["checks"]
    assert deep.status_code == 503 and deep.get_json()["status"] == "unavailable"
    assert checks["database"] == "ok"
    assert checks["broker"].startswith("error: ") and checks["s3"].startswith("error: ")
    # Only the exception's type: no URL, host or credential.
    assert "127.0.0.1" not in deep.get_data(as_text=True)


def test_readyz_fails_when_the_database_is_down() -> None:
    app = create_app(make_settings(database_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/kling"))
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503
    assert list(ready.get_json()["checks"]) == ["database"]
    assert ready.get_json()["checks"]["database"].startswith("error: ")


def test_the_deep_report_runs_its_checks_at_most_once_per_window() -> None:
    calls: list[str] = []
    now = [100.0]

    def check() -> None:
        calls.append("broker")

    def failing() -> None:
        calls.append("s3")
        raise ConnectionError("http://user:pw@s3.internal/")

    deep = DeepReport(max_age=10, clock=lambda: now[0])
    for _ in range(5):
        assert deep.get({"broker": check, "s3": failing}) == {"broker": "ok", "s3": "error: ConnectionError"}
        now[0] += 1.5
    assert calls == ["broker", "s3"]
    now[0] += 10
    deep.get({"broker": check, "s3": failing})
    assert calls == ["broker", "s3", "broker", "s3"]


def test_liveness_answers_without_touching_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(make_settings())
    touched: list[Any] = []
    monkeypatch.setattr("webhook.health.run_checks", lambda checks: touched.append(checks) or {})
    assert app.test_client().get("/healthz").get_json() == {"status": "ok"}
    assert touched == []
