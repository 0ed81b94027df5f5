"""Structured JSON logs (job id, provider task id) and the rule that no secret is ever logged or answered."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from kling.callbacks import sign_callback
from klingctl.ops import gunicorn_argv
from models.base import utcnow
from models.logging import REDACTED, JsonFormatter, install_redaction, log_context, secret_values
from models.tables import Job
from models.tokens import callback_token
from tests.api.conftest import (
    AUTH,
    TEST_APPYPIE_KEY,
    TEST_KLING_API_KEY,
    TEST_NOTIFY_SECRET,
    Api,
    make_settings,
)
from tests.conftest import (
    TEST_API_TOKEN,
    TEST_CALLBACK_SECRET,
    TEST_SECRET_KEY,
    TEST_WEBHOOK_SECRET,
)
from tests.data.helpers import encode, legacy_body
from tests.wsgi import serve_wsgi

ROOT = Path(__file__).resolve().parents[2]

TEST_AWS_SECRET = "test-aws-secret-access-key-0123456789abcdef"
SECRETS = [
    TEST_API_TOKEN,
    TEST_CALLBACK_SECRET,
    TEST_SECRET_KEY,
    TEST_WEBHOOK_SECRET,
    TEST_WEBHOOK_SECRET.removeprefix("whsec_"),
    TEST_KLING_API_KEY,
    TEST_APPYPIE_KEY,
    TEST_NOTIFY_SECRET,
    TEST_NOTIFY_SECRET.removeprefix("whsec_"),
    TEST_AWS_SECRET,
]


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything the process logs, through the production JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_job_and_provider_task_ids(json_log: io.StringIO) -> None:
    log = logging.getLogger("kling.test")
    with log_context(job_id="job-1", provider_task_id="task-9"):
        log.info("submitted %d slots", 2)
    log.info("explicit", extra={"job_id": "job-2", "attempt": 3})
    log.info("no ids")
    first, second, third = json_lines(json_log)[-3:]
    assert first["message"] == "submitted 2 slots"
    assert (first["job_id"], first["provider_task_id"]) == ("job-1", "task-9")
    assert first["level"] == "INFO" and first["logger"] == "kling.test" and first["ts"].endswith("+00:00")
    assert (second["job_id"], second["attempt"]) == ("job-2", 3) and "provider_task_id" not in second
    assert "job_id" not in third


def test_secrets_are_scrubbed_from_messages_arguments_and_exceptions(
    json_log: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    install_redaction(make_settings())
    log = logging.getLogger("kling.test")
    with caplog.at_level(logging.DEBUG):
        log.warning("calling with key %s", TEST_SECRET_KEY)
        log.info(f"token={TEST_API_TOKEN}")
        try:
            raise RuntimeError(f"upstream echoed {TEST_CALLBACK_SECRET}")
        except RuntimeError:
            log.exception("failed")
    out = json_log.getvalue()
    for text in (out, caplog.text):
        assert TEST_SECRET_KEY not in text and TEST_API_TOKEN not in text and TEST_CALLBACK_SECRET not in text
        assert text.count(REDACTED) >= 3
    assert json_lines(json_log)[-1]["exc"].endswith(f"RuntimeError: upstream echoed {REDACTED}")


def test_a_callback_that_raises_logs_its_path_without_the_token(
    api: Api, json_log: io.StringIO, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webhook.callbacks

    def explode(body: bytes) -> None:
        raise RuntimeError("a bug while parsing")

    monkeypatch.setattr(webhook.callbacks, "verify_callback_signature", lambda *args: None)
    monkeypatch.setattr(webhook.callbacks, "parse_callback", explode)
    api.app.testing = False  # let Flask log the exception, as in production
    job_id = api.create({"prompt": "p"}).get_json()["id"]
    token = callback_token(TEST_CALLBACK_SECRET, job_id)
    caplog.set_level(logging.DEBUG)
    answer = api.client.post(f"/callbacks/kling/{job_id}/{token}", data=b"{}")
    assert answer.status_code == 500
    assert any("Exception on /callbacks/kling/" in r.getMessage() for r in caplog.records)
    for text in (json_log.getvalue(), caplog.text):
        assert token not in text
        assert f"/callbacks/kling/{job_id}/{REDACTED}" in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post_until_served(url: str, body: bytes, deadline: float) -> int:
    while True:
        try:
            return requests.post(url, data=body, headers={"Referer": url}, timeout=10).status_code
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)  # polling interval of a deadline loop


def test_gunicorn_access_and_error_logs_never_show_a_callback_token(tmp_path: Path) -> None:
    """The real gunicorn, with the project's config and its default access-log format (request
    line, referrer): a 400 and a 500 raised in the view leave the token in no line."""
    job_id = "5f6a0c0e-8a1b-4c8e-9d2f-0b1e2c3d4a5b"
    token = callback_token(TEST_CALLBACK_SECRET, job_id)
    port = _free_port()
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    argv = gunicorn_argv(
        "127.0.0.1",
        port,
        1,
        ("--access-logfile", str(access), "--error-logfile", str(errors), "--log-level", "debug"),
    )
    argv[-1] = "tests.api.logging_app:app()"
    stderr = tmp_path / "stderr.log"  # the app's own JSON lines (Flask's exception log)
    with stderr.open("wb") as out:
        server = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}/callbacks/kling/{job_id}/{token}"
        deadline = time.monotonic() + 60
        assert _post_until_served(url, b"{oops", deadline) == 400
        assert _post_until_served(url + "?x=1", b"boom", deadline) == 500
    finally:
        server.terminate()
        server.wait(timeout=30)
    logged = access.read_text() + errors.read_text() + stderr.read_text()
    assert f"/callbacks/kling/{job_id}/{REDACTED}" in access.read_text()
    assert f"Exception on /callbacks/kling/{job_id}/{REDACTED} [POST]" in stderr.read_text()
    assert token not in logged and token[:16] not in logged


def test_werkzeug_request_lines_never_show_a_callback_token(
    api: Api, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The development server (`klingctl webhook --dev`, the tests' `serve_wsgi`) logs each request
    line through the `werkzeug` logger: scrubbed like every other record."""
    import webhook.callbacks

    def explode(body: bytes) -> None:
        raise RuntimeError("a bug while parsing")

    job_id = api.create({"prompt": "p"}).get_json()["id"]
    token = callback_token(TEST_CALLBACK_SECRET, job_id)
    caplog.set_level(logging.DEBUG)
    api.app.testing = False
    with serve_wsgi(api.app) as base:
        url = f"{base}/callbacks/kling/{job_id}/{token}"
        assert requests.post(url, data=b"{}", timeout=10).status_code == 401  # unsigned: refused
        monkeypatch.setattr(webhook.callbacks, "verify_callback_signature", lambda *args: None)
        monkeypatch.setattr(webhook.callbacks, "parse_callback", explode)
        assert requests.post(url, data=b"{}", timeout=10).status_code == 500
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert len([line for line in lines if f"/callbacks/kling/{job_id}/{REDACTED}" in line]) == 2, lines
    assert token not in caplog.text


@pytest.mark.parametrize(
    ("url", "password", "kept"),
    [
        ("postgresql+psycopg://kling:hunter2-pw@db:5432/kling", "hunter2-pw", f"kling:{REDACTED}@db"),
        ("postgresql+psycopg://u:pw@h/db", ":pw@", f"u:{REDACTED}@h/db"),
        ("redis://:pw@h:6379/0", ":pw@", f"redis://:{REDACTED}@h:6379/0"),
        ("amqp://u:pw@h//", ":pw@", f"amqp://u:{REDACTED}@h//"),
    ],
)
def test_url_passwords_are_redacted(
    url: str, password: str, kept: str, caplog: pytest.LogCaptureFixture, json_log: io.StringIO
) -> None:
    install_redaction(make_settings())  # what create_app and configure_logging do
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("kling.test")
    log.warning("connecting to %s", url)
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        log.exception("broker down")
    for text in (caplog.text, json_log.getvalue()):
        assert password not in text and kept in text


def test_secret_values_cover_every_configured_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET)
    metrics_token = "test-metrics-token-0123456789-abcdefghijk"
    assert secret_values(make_settings(metrics_token=metrics_token)) >= {*SECRETS, metrics_token}


def test_no_secret_in_logs_or_api_output_for_a_whole_run(
    api: Api, json_log: io.StringIO, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET)
    install_redaction(make_settings())  # what create_app does, now with the AWS secret set
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # SQL and its parameters too
    answers: list[str] = []

    def keep(response: Any) -> Any:
        answers.append(f"{response.status_code} {dict(response.headers)} {response.get_data(as_text=True)}")
        return response

    caplog.set_level(logging.DEBUG)
    try:
        job_id = keep(api.create({"prompt": "fox", "n": 2}, **{"Idempotency-Key": "k1"})).get_json()["id"]
        keep(api.create({"prompt": "fox", "n": 2}, **{"Idempotency-Key": "k1"}))
        keep(api.create({"prompt": "", "n": 40, "callback_url": "https://x.example.com"}))
        keep(api.client.post("/v1/jobs", data=b"{oops", headers=AUTH))
        keep(api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {TEST_API_TOKEN[:-1]}"}))
        keep(api.client.get("/v1/jobs"))
        keep(api.get("/v1/jobs?limit=1"))
        keep(api.get("/v1/jobs?cursor=bogus"))
        keep(api.get(f"/v1/jobs/{job_id}"))
        keep(api.get(f"/v1/jobs/{job_id}/images/0"))
        keep(api.get("/v1/jobs/00000000-0000-4000-8000-000000000000"))
        keep(api.get("/v1/dashboard"))

        # A provider callback, signed; then a forged token and a bad signature.
        body = encode(legacy_body("task-1", "processing", external_task_id=job_id))
        stamp = int(utcnow().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": "msg_leak",
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_callback(TEST_WEBHOOK_SECRET, "msg_leak", stamp, body),
        }
        token = callback_token(TEST_CALLBACK_SECRET, job_id)
        keep(api.client.post(f"/callbacks/kling/{job_id}/{token}", data=body, headers=headers))
        keep(api.client.post(f"/callbacks/kling/{job_id}/{'0' * 64}", data=body, headers=headers))
        keep(
            api.client.post(
                f"/callbacks/kling/{job_id}/{token}",
                data=body,
                headers={**headers, "webhook-id": "msg_2", "webhook-signature": "v1,AAAA"},
            )
        )
        keep(api.client.get("/metrics"))
        keep(api.client.get("/openapi.json"))
        keep(api.client.get("/readyz"))
        keep(api.client.get("/"))
        # A careless log line in some code path: it must come out scrubbed.
        logging.getLogger("kling.careless").error("config dump: %s", {"api_token": TEST_API_TOKEN})
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)

    # The run really happened and really was logged (so the absence below means something).
    assert api.session.get(Job, job_id) is not None
    assert any(
        line.get("job_id") == job_id and line["message"].startswith("job created")
        for line in json_lines(json_log)
    )
    assert any("callback applied" in r.getMessage() for r in caplog.records)
    assert REDACTED in json_log.getvalue() and REDACTED in caplog.text

    outputs = {
        "api": "\n".join(answers),
        "json log": json_log.getvalue(),
        "caplog": caplog.text,
        "records": "\n".join(f"{r.getMessage()} {r.exc_text or ''} {vars(r)}" for r in caplog.records),
    }
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"a configured secret appeared in {where}"
