"""The callback receiver, in-process, on both backends; each test's writes are rolled back."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

import kling.callbacks
import webhook.db
from kling.types import Task, TaskStatus
from models import CallbackEvent, Image, Job, Outbox, callback_token, callback_url, create_job, transition
from models.db import session_scope
from models.settings import Settings
from models.statemachine import apply_provider_task
from tests.conftest import TEST_API_TOKEN, TEST_CALLBACK_SECRET, TEST_WEBHOOK_SECRET
from tests.data.helpers import encode, legacy_body, signed_headers, snapshot, transitions_of
from webhook import create_app


@dataclass
class Env:
    client: FlaskClient
    session: Session

    def new_job(self, provider_task_id: str | None = "task-1") -> Job:
        job = create_job(self.session, {"prompt": "p", "n": 2}, provider="kling").job
        if provider_task_id:
            transition(self.session, job, "submitted", source="worker", provider_task_id=provider_task_id)
        self.session.commit()
        return job

    def post(
        self, job_id: str, body: bytes, *, token: str | None = None, headers: dict[str, str] | None = None
    ):
        token = token if token is not None else callback_token(TEST_CALLBACK_SECRET, job_id)
        return self.client.post(
            f"/callbacks/kling/{job_id}/{token}",
            data=body,
            headers=headers or {"content-type": "application/json"},
        )

    def post_signed(self, job_id: str, body: bytes, *, msg_id: str | None = None):
        """A signed delivery (needs `signed_env`): trusted, applied directly."""
        return self.post(job_id, body, headers=signed_headers(body, msg_id=msg_id))


def settings(*, signed: bool, database_url: str = "sqlite://") -> Settings:
    return Settings(
        database_url=database_url,
        public_base_url="https://hooks.example.com",
        callback_secret=SecretStr(TEST_CALLBACK_SECRET),
        kling_webhook_secret=SecretStr(TEST_WEBHOOK_SECRET) if signed else None,
    )


def _env(engine: Engine, *, signed: bool) -> Iterator[Env]:
    with engine.connect() as connection:
        outer = connection.begin()
        factory = sessionmaker(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        app = create_app(settings(signed=signed), session_factory=factory)
        session = factory()
        try:
            yield Env(app.test_client(), session)
        finally:
            session.close()
            outer.rollback()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    name = "db_engine" if request.param == "postgresql" else "sqlite_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


@pytest.fixture
def env(engine: Engine) -> Iterator[Env]:
    yield from _env(engine, signed=False)


@pytest.fixture
def signed_env(engine: Engine) -> Iterator[Env]:
    yield from _env(engine, signed=True)


def test_callback_url_carries_the_job_token() -> None:
    url = callback_url("https://hooks.example.com/", TEST_CALLBACK_SECRET, "job-1")
    assert (
        url
        == f"https://hooks.example.com/callbacks/kling/job-1/{callback_token(TEST_CALLBACK_SECRET, 'job-1')}"
    )
    assert callback_token(TEST_CALLBACK_SECRET, "job-1") != callback_token(TEST_CALLBACK_SECRET, "job-2")


def test_applies_and_answers_duplicates(signed_env: Env) -> None:
    env = signed_env
    job = env.new_job()
    body = encode(legacy_body("task-1", "succeeded"))
    # A redelivery keeps its webhook-id, the dedupe key.
    answers = [env.post_signed(job.id, body, msg_id="msg_dup") for _ in range(3)]
    assert [(a.status_code, a.get_json()["outcome"]) for a in answers] == [
        (200, "applied"),
        (200, "duplicate"),
        (200, "duplicate"),
    ]
    env.session.expire_all()
    assert env.session.get(Job, job.id).status == "succeeded"  # type: ignore[union-attr]
    assert [t[1] for t in transitions_of(env.session, job.id)] == ["queued", "submitted", "succeeded"]
    assert len(env.session.scalars(select(Image).where(Image.job_id == job.id)).all()) == 2
    events = env.session.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id)).all()
    assert [(e.outcome, e.body) for e in events] == [("applied", body.decode())]
    assert events[0].dedupe_key == "webhook-id:msg_dup"


def _outbox_of(session: Session, job_id: str) -> dict[str, bool]:
    """task -> dispatched, for the job's outbox rows."""
    session.expire_all()
    rows = session.scalars(select(Outbox)).all()
    return {row.task: row.dispatched_at is not None for row in rows if row.args == [job_id]}


def test_applied_callback_publishes_its_own_outbox_rows_after_commit(
    signed_env: Env, recorded_publishes
) -> None:
    env = signed_env
    job = env.new_job()
    recorded_publishes.clear()
    assert env.post_signed(job.id, encode(legacy_body("task-1", "succeeded"))).status_code == 200
    # Only the rows this callback wrote; the slots were released in the request, so that row is
    # marked done without a worker. The submit row is not this request's: the relay sends it.
    assert recorded_publishes == [("archive_job", [job.id])]
    dispatched = _outbox_of(env.session, job.id)
    assert dispatched == {"submit_job": False, "archive_job": True, "release_slots": True}
    recorded_publishes.clear()
    assert env.post_signed(job.id, encode(legacy_body("task-1", "succeeded"))).get_json() == {
        "outcome": "duplicate"
    }
    assert recorded_publishes == []


def test_slots_the_request_could_not_release_go_to_a_worker(
    signed_env: Env, recorded_publishes, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = signed_env

    class DownLimiter:
        def release(self, job_id: str) -> None:
            raise ConnectionError("limiter unreachable")

    monkeypatch.setattr(webhook.db, "limiter_for", lambda _app: DownLimiter())
    job = env.new_job()
    recorded_publishes.clear()
    assert env.post_signed(job.id, encode(legacy_body("task-1", "failed", message="x"))).status_code == 200
    assert recorded_publishes == [("release_slots", [job.id])]
    assert _outbox_of(env.session, job.id)["release_slots"] is True


def test_a_broker_outage_leaves_the_rows_for_the_relay(signed_env: Env, recorded_publishes) -> None:
    env = signed_env

    def down(name: str, args: list[Any]) -> None:
        raise ConnectionError("broker down")

    job = env.new_job()
    webhook.db.set_publisher(env.client.application, down)
    assert env.post_signed(job.id, encode(legacy_body("task-1", "succeeded"))).status_code == 200
    # The slots were released in the request; archiving waits in the outbox for the relay.
    dispatched = _outbox_of(env.session, job.id)
    assert dispatched == {"submit_job": False, "archive_job": False, "release_slots": True}


def test_out_of_order(signed_env: Env) -> None:
    env = signed_env
    job = env.new_job()
    assert env.post_signed(job.id, encode(legacy_body("task-1", "succeeded"))).get_json() == {
        "outcome": "applied"
    }
    assert env.post_signed(job.id, encode(legacy_body("task-1", "processing"))).get_json() == {
        "outcome": "stale"
    }
    failed = env.post_signed(job.id, encode(legacy_body("task-1", "failed", message="late")))
    assert (failed.status_code, failed.get_json()) == (200, {"outcome": "stale"})
    env.session.expire_all()
    stored = env.session.get(Job, job.id)
    assert stored is not None
    assert (stored.status, stored.error_code) == ("succeeded", None)
    outcomes = env.session.scalars(
        select(CallbackEvent.outcome).where(CallbackEvent.job_id == job.id).order_by(CallbackEvent.id)
    ).all()
    assert outcomes == ["applied", "stale", "stale"]


def test_newer_standard_shape_with_external_id_is_adopted(signed_env: Env) -> None:
    env = signed_env
    job = env.new_job(provider_task_id=None)
    body = encode(
        {"id": "t-9", "status": "succeeded", "external_id": job.id, "outputs": [{"url": "https://x/1.png"}]}
    )
    assert env.post_signed(job.id, body).get_json() == {"outcome": "applied"}
    env.session.expire_all()
    stored = env.session.get(Job, job.id)
    assert stored is not None
    assert (stored.status, stored.provider_task_id) == ("succeeded", "t-9")


@pytest.mark.parametrize(
    "body",
    [
        encode(legacy_body("task-1", "failed", message="forged")),
        encode(legacy_body("task-1", "succeeded")),
        encode({"id": "task-1", "status": "succeeded", "outputs": [{"url": "https://x/1.png"}]}),
    ],
    ids=["failed", "succeed", "standard-succeeded"],
)
def test_unsigned_final_reports_are_stored_unconfirmed_and_looked_up(
    env: Env, recorded_publishes, body: bytes
) -> None:
    """Without KLING_WEBHOOK_SECRET the token alone cannot end a task: nothing moves, the event is
    kept as `unconfirmed` and one lookup of the job goes to a worker after the commit."""
    job = env.new_job()
    before = snapshot(env.session)
    recorded_publishes.clear()
    answer = env.post(job.id, body)
    assert (answer.status_code, answer.get_json()) == (200, {"outcome": "unconfirmed"})
    assert recorded_publishes == [("confirm_job", [job.id])]
    after = snapshot(env.session)
    assert after["jobs"] == before["jobs"]  # status, task id, error: unchanged
    assert after["counts"] == before["counts"] | {
        "callback_events": before["counts"]["callback_events"] + 1,
        "outbox": before["counts"]["outbox"] + 1,
    }
    assert transitions_of(env.session, job.id)[-1][1] == "submitted"
    event = env.session.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id)).one()
    assert event.outcome == "unconfirmed"
    assert _outbox_of(env.session, job.id) == {"submit_job": False, "confirm_job": True}
    # A redelivery is a duplicate and asks nothing more.
    recorded_publishes.clear()
    assert env.post(job.id, body).get_json() == {"outcome": "duplicate"}
    assert recorded_publishes == []


def test_unsigned_hints_and_repeats_still_apply_directly(env: Env, recorded_publishes) -> None:
    """`processing` is harmless, so it is applied unsigned; a report the job is already past needs
    no lookup (stale or duplicate as before)."""
    job = env.new_job()
    processing = env.post(job.id, encode(legacy_body("task-1", "processing")))
    assert processing.get_json() == {"outcome": "applied"}
    env.session.expire_all()
    assert env.session.get(Job, job.id).status == "processing"  # type: ignore[union-attr]
    env.session.execute(update(Job).where(Job.id == job.id).values(status="archived"))
    env.session.commit()
    recorded_publishes.clear()
    late = env.post(job.id, encode(legacy_body("task-1", "failed", message="late")))
    assert late.get_json() == {"outcome": "stale"}
    again = env.post(job.id, encode(legacy_body("task-1", "succeeded")))
    assert again.get_json() == {"outcome": "duplicate"}
    assert recorded_publishes == []
    env.session.expire_all()
    assert env.session.get(Job, job.id).status == "archived"  # type: ignore[union-attr]


def test_an_unsigned_report_cannot_set_the_images_of_a_bare_success(env: Env, recorded_publishes) -> None:
    """A job that succeeded without images (a bare report) gets them from the provider's lookup,
    never from an unsigned callback."""
    job = env.new_job()
    bare = Task(task_id="task-1", status=TaskStatus.SUCCEEDED, external_task_id=job.id)
    apply_provider_task(env.session, job.id, bare, source="poll")
    env.session.commit()
    recorded_publishes.clear()
    answer = env.post(job.id, encode(legacy_body("task-1", "succeeded")))
    assert answer.get_json() == {"outcome": "unconfirmed"}
    assert recorded_publishes == [("confirm_job", [job.id])]
    assert env.session.scalars(select(Image).where(Image.job_id == job.id)).all() == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (encode({"task_status": "succeed"}), 400),
        (encode({"task_id": "task-1", "task_status": "exploded"}), 400),
        (b"x" * (2 * 1024 * 1024), 413),
        (b'{"task_id": "task-1", "task_status": "succeed", "created_at": NaN}', 400),
        (encode({**legacy_body("task-1", "succeeded"), "created_at": 1e20}), 400),
        (
            encode(
                legacy_body("task-1", "succeeded")
                | {"task_result": {"images": [{"index": 2**40, "url": "u"}]}}
            ),
            400,
        ),
        (encode({"task_id": "t" * 200, "task_status": "succeed"}), 400),
        (encode({"task_id": "task\u0000-1", "task_status": "succeed"}), 400),
        (encode({"id": "task-1", "status": "succeeded", "outputs": [{"url": "https://x/\u0000"}]}), 400),
    ],
    ids=[
        "malformed",
        "array",
        "missing-task-id",
        "unknown-status",
        "2MiB",
        "nan-time",
        "far-time",
        "huge-index",
        "long-task-id",
        "nul-task-id",
        "nul-url",
    ],
)
def test_bad_bodies_are_refused_and_write_nothing(env: Env, body: bytes, status: int) -> None:
    job = env.new_job()
    before = snapshot(env.session)
    answer = env.post(job.id, body)
    assert answer.status_code == status
    assert answer.get_json()["error"]
    assert snapshot(env.session) == before


def _legacy(**fields: Any) -> dict[str, Any]:
    return {**legacy_body("task-1", "succeeded"), **fields}


def _standard(**fields: Any) -> dict[str, Any]:
    body = {"id": "task-1", "status": "succeeded", "message": "", "outputs": [{"url": "https://x/1.png"}]}
    return {**body, **fields}


def _nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


SURROGATE = "\\ud800"  # a lone surrogate, as a JSON escape
HOSTILE: dict[str, bytes] = {
    # Timestamps (legacy created_at/updated_at, standard create_time/update_time).
    **{
        f"{shape}-{field}-{name}": raw
        for shape, fields, make in (
            ("legacy", ("created_at", "updated_at"), _legacy),
            ("standard", ("create_time", "update_time"), _standard),
        )
        for field in fields
        for name, raw in (
            ("nan", encode(make(**{field: "@"})).replace(b'"@"', b"NaN")),
            ("infinity", encode(make(**{field: "@"})).replace(b'"@"', b"-Infinity")),
            ("1e20", encode(make(**{field: 1e20}))),
            ("negative", encode(make(**{field: -1}))),
            ("string", encode(make(**{field: "yesterday"}))),
            ("object", encode(make(**{field: {"ms": 1}}))),
        )
    },
    # Image indexes and URLs.
    **{
        f"legacy-index-{name}": encode(
            _legacy(task_result={"images": [{"index": index, "url": "https://x/1"}]})
        )
        for name, index in (
            ("2^40", 2**40),
            ("negative", -1),
            ("string", "0"),
            ("float", 0.5),
            ("bool", True),
        )
    },
    "legacy-url-surrogate": encode(_legacy(task_result={"images": [{"url": "https://x/"}]})).replace(
        b"https://x/", b"https://x/" + SURROGATE.encode()
    ),
    "legacy-watermark-int": encode(
        _legacy(task_result={"images": [{"url": "https://x/1", "watermark_url": 7}]})
    ),
    "standard-url-int": encode(_standard(outputs=[{"url": 5}])),
    "standard-outputs-object": encode(_standard(outputs={"url": "https://x/1"})),
    "standard-output-string": encode(_standard(outputs=["https://x/1"])),
    # Task ids.
    **{
        f"{shape}-task-id-{name}": encode(make(**{key: value}))
        for shape, key, make in (("legacy", "task_id", _legacy), ("standard", "id", _standard))
        for name, value in (("200-chars", "t" * 200), ("nul", "task\u0000-1"), ("int", 7), ("list", ["t"]))
    },
    "legacy-task-id-surrogate": encode(_legacy(task_id="@")).replace(b'"@"', f'"{SURROGATE}"'.encode()),
    "standard-id-surrogate": encode(_standard(id="@")).replace(b'"@"', f'"{SURROGATE}"'.encode()),
    # Every other field with the wrong type or a lone surrogate.
    "legacy-status-int": encode(_legacy(task_status=1)),
    "legacy-status-null": encode(_legacy(task_status=None)),
    "standard-status-list": encode(_standard(status=["succeeded"])),
    "legacy-message-object": encode(_legacy(task_status_msg={"m": 1})),
    "standard-message-number": encode(_standard(message=3)),
    "legacy-message-surrogate": encode(_legacy(task_status_msg="@")).replace(
        b'"@"', f'"{SURROGATE}"'.encode()
    ),
    "legacy-task-info-list": encode(_legacy(task_info=["x"])),
    "legacy-external-id-int": encode(_legacy(task_info={"external_task_id": 5})),
    "standard-external-id-surrogate": encode(_standard(external_id="@")).replace(
        b'"@"', f'"{SURROGATE}"'.encode()
    ),
    "legacy-task-result-list": encode(_legacy(task_result=["x"])),
    "legacy-images-object": encode(_legacy(task_result={"images": {"url": "https://x/1"}})),
    # Not an object, too deep, not UTF-8.
    **{
        f"non-object-{name}": encode(value)
        for name, value in (("list", []), ("string", "s"), ("number", 1), ("null", None), ("true", True))
    },
    "nested-500-levels": encode(_legacy(task_info=_nested(500))),
    "nested-100000-levels": b"[" * 100_000 + b"]" * 100_000,
    "utf-16": json.dumps(_legacy()).encode("utf-16"),
    "invalid-utf-8": encode(_legacy(task_status_msg="@")).replace(b'"@"', b'"\xff\xfe"'),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_callbacks_answer_400_and_change_nothing(env: Env, body: bytes) -> None:
    """Issue 16: every malformed field of both shapes answers 4xx with the field named (never a 5xx)
    and writes nothing, though the token is valid."""
    job = env.new_job()
    before = snapshot(env.session)
    answer = env.post(job.id, body)
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert answer.get_json()["error"]
    assert snapshot(env.session) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"webhook-id": "w" * 400},
        {"webhook-id": "\u00e9\u00ff" * 100},
        {"user-agent": "u" * 8000, "content-type": "text/plain"},
        {"webhook-timestamp": "NaN", "webhook-signature": "v1,@@@"},
    ],
    ids=["400-char-id", "latin-1-id", "long-user-agent", "junk-signature-headers"],
)
def test_odd_headers_on_a_valid_hint_are_applied_not_failed(env: Env, headers: dict[str, str]) -> None:
    job = env.new_job()
    answer = env.post(job.id, encode(legacy_body("task-1", "processing")), headers=headers)
    assert (answer.status_code, answer.get_json()) == (200, {"outcome": "applied"})


def test_an_overlong_webhook_id_still_dedupes(env: Env) -> None:
    job = env.new_job()
    body = encode(legacy_body("task-1", "processing"))
    headers = {"content-type": "application/json", "webhook-id": "w" * 400}
    assert env.post(job.id, body, headers=headers).get_json() == {"outcome": "applied"}
    assert env.post(job.id, body, headers=headers).get_json() == {"outcome": "duplicate"}


def test_unknown_job_and_foreign_task(env: Env) -> None:
    job = env.new_job()
    before = snapshot(env.session)
    unknown = env.post("00000000-0000-0000-0000-000000000000", encode(legacy_body("task-1", "succeeded")))
    assert unknown.status_code == 404
    foreign = env.post(job.id, encode(legacy_body("task-2", "succeeded")))
    assert foreign.status_code == 409
    assert snapshot(env.session) == before


def test_forged_tokens_are_refused(env: Env) -> None:
    job = env.new_job()
    victim = env.new_job(provider_task_id="task-v")
    before = snapshot(env.session)
    rejected_before = REGISTRY.get_sample_value("kling_callbacks_total", {"outcome": "rejected"}) or 0
    body = encode(legacy_body("task-1", "succeeded"))
    assert env.post(job.id, body, token="0" * 64).status_code == 403
    assert env.post(job.id, body, token=callback_token(TEST_CALLBACK_SECRET, victim.id)).status_code == 403
    assert (
        env.post(
            job.id, body, token=callback_token("another-secret-0123456789-abcdefghijkl", job.id)
        ).status_code
        == 403
    )
    # Unknown jobs look exactly like forged ones without a valid token.
    assert env.post("no-such-job", body, token="0" * 64).status_code == 403
    assert snapshot(env.session) == before
    assert REGISTRY.get_sample_value("kling_callbacks_total", {"outcome": "rejected"}) == rejected_before + 4


def test_signed_callbacks(signed_env: Env) -> None:
    env = signed_env
    job = env.new_job()
    body = encode(legacy_body("task-1", "processing"))
    before = snapshot(env.session)

    unsigned = env.post(job.id, body)
    tampered = env.post(job.id, encode(legacy_body("task-1", "succeeded")), headers=signed_headers(body))
    wrong_secret = env.post(job.id, body, headers=signed_headers(body, secret="whsec_" + "QUJD" * 8))
    past = env.post(job.id, body, headers=signed_headers(body, timestamp=_now() - 3600))
    future = env.post(job.id, body, headers=signed_headers(body, timestamp=_now() + 3600))
    assert [a.status_code for a in (unsigned, tampered, wrong_secret, past, future)] == [401] * 5
    assert snapshot(env.session) == before

    headers = signed_headers(body, msg_id="msg_1")
    assert env.post(job.id, body, headers=headers).get_json() == {"outcome": "applied"}
    # A redelivery keeps its webhook-id: a duplicate, whatever the new timestamp.
    assert env.post(job.id, body, headers=signed_headers(body, msg_id="msg_1")).get_json() == {
        "outcome": "duplicate"
    }
    env.session.expire_all()
    event = env.session.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id)).one()
    assert event.dedupe_key == "webhook-id:msg_1"
    assert event.headers is not None
    assert "webhook-signature" not in event.headers
    assert event.headers["webhook-id"] == "msg_1"


def test_official_standard_webhooks_vector(signed_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env = signed_env
    job = env.new_job(provider_task_id="1234567890")
    body = (
        b'{"id":"1234567890","status":"succeeded","message":"","create_time":1781080778802,'
        b'"update_time":1781080794151}'
    )
    headers = {
        "content-type": "application/json",
        "webhook-id": "9876543210",
        "webhook-timestamp": "1781080794",
        "webhook-signature": "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4=",
    }
    monkeypatch.setattr(kling.callbacks, "time", SimpleNamespace(time=lambda: 1781080794.0))
    answer = env.post(job.id, body, headers=headers)
    assert (answer.status_code, answer.get_json()) == (200, {"outcome": "applied"})
    env.session.expire_all()
    assert env.session.get(Job, job.id).status == "succeeded"  # type: ignore[union-attr]


def test_database_down_answers_503() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    app = create_app(settings(signed=False, database_url=f"postgresql://postgres@127.0.0.1:{port}/kling"))
    client = app.test_client()
    job_id = "00000000-0000-0000-0000-000000000001"
    token = callback_token(TEST_CALLBACK_SECRET, job_id)
    answer = client.post(f"/callbacks/kling/{job_id}/{token}", data=encode(legacy_body("t", "succeeded")))
    assert answer.status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["database"].startswith("error")
    assert client.get("/healthz").status_code == 200


def test_health(env: Env) -> None:
    assert env.client.get("/healthz").get_json() == {"status": "ok"}
    ready = env.client.get("/readyz")
    assert ready.get_json()["checks"]["database"] == "ok"


def _now() -> int:
    import time

    return int(time.time())


def test_final_callback_on_a_real_engine_hands_slots_on_and_marks_its_rows(
    committed_pg_url: str, recorded_publishes
) -> None:
    """The after-commit work runs on one autocommit connection of the app's own PostgreSQL pool."""
    app = create_app(settings(signed=True, database_url=committed_pg_url))
    with app.app_context():
        factory = webhook.db.sessions()
        limiter = webhook.db.limiter_for(app)
    with session_scope(factory) as s:
        running = create_job(s, {"prompt": "running", "n": 5}, provider="kling").job
        transition(s, running, "submitted", source="worker", provider_task_id="task-run")
        waiting = create_job(s, {"prompt": "waiting", "n": 1}, provider="kling").job
    assert limiter.acquire(running.id, 5) and not limiter.acquire(waiting.id, 1)
    recorded_publishes.clear()

    client = app.test_client()
    token = callback_token(TEST_CALLBACK_SECRET, running.id)
    body = encode(legacy_body("task-run", "succeeded"))
    answer = client.post(f"/callbacks/kling/{running.id}/{token}", data=body, headers=signed_headers(body))
    assert answer.get_json() == {"outcome": "applied"}

    assert limiter.holders() == {}
    assert ("dispatch_job", [waiting.id]) in recorded_publishes  # the waiting job got the slots
    assert ("archive_job", [running.id]) in recorded_publishes
    assert ("release_slots", [running.id]) not in recorded_publishes  # done in the request
    with factory() as s:
        assert _outbox_of(s, running.id) == {"submit_job": False, "archive_job": True, "release_slots": True}
        # The pooled connection went back in its normal mode: this session's work rolls back.
        s.add(Job(provider="kling", params={}, status="queued"))
        s.flush()
        s.rollback()
        assert s.scalar(select(func.count()).select_from(Job)) == 2
    # The API reads on autocommit connections of the same pool.
    auth = {"Authorization": f"Bearer {TEST_API_TOKEN}"}
    shown = client.get(f"/v1/jobs/{running.id}", headers=auth).get_json()
    assert (shown["status"], [t["to"] for t in shown["transitions"]]) == (
        "succeeded",
        ["queued", "submitted", "succeeded"],
    )
    listed = client.get("/v1/jobs?status=queued", headers=auth).get_json()
    assert [j["id"] for j in listed["jobs"]] == [waiting.id]
    engine = app.extensions["kling.sessions"].kw["bind"]
    engine.dispose()
