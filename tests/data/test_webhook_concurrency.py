"""Repeated and concurrent deliveries against a real threaded HTTP server and a database that commits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import CallbackEvent, Image, Job, callback_token, create_job, transition
from models.db import make_engine, make_sessionmaker, upgrade
from models.settings import Settings
from tests.conftest import TEST_CALLBACK_SECRET, TEST_WEBHOOK_SECRET
from tests.data.helpers import encode, legacy_body, signed_headers, transitions_of
from tests.wsgi import serve_wsgi
from webhook import create_app


@pytest.fixture(params=["postgresql", "sqlite"])
def committing_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgresql":
        url = request.getfixturevalue("committed_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'kling.db'}"
        upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def server(committing_engine: Engine) -> Iterator[str]:
    with _serve(committing_engine) as url:
        yield url


@contextmanager
def _serve(engine: Engine) -> Iterator[str]:
    # Signed, so final reports are trusted and applied in the request (the path raced here).
    settings = Settings(
        database_url="sqlite://",
        callback_secret=SecretStr(TEST_CALLBACK_SECRET),
        kling_webhook_secret=SecretStr(TEST_WEBHOOK_SECRET),
    )
    app = create_app(settings, session_factory=make_sessionmaker(engine))
    with serve_wsgi(app) as url:
        yield url


def _deliver(url: str, body: bytes, webhook_id: str) -> tuple[int, str]:
    headers = signed_headers(body, msg_id=webhook_id)
    answer = requests.post(url, data=body, headers=headers, timeout=30)
    return answer.status_code, answer.json().get("outcome", "")


def test_ten_deliveries_per_status_some_concurrent(server: str, committing_engine: Engine) -> None:
    with Session(committing_engine, expire_on_commit=False) as session:
        job = create_job(session, {"prompt": "p", "n": 2}, provider="kling").job
        transition(session, job, "submitted", source="worker", provider_task_id="task-1")
        session.commit()
    url = f"{server}/callbacks/kling/{job.id}/{callback_token(TEST_CALLBACK_SECRET, job.id)}"

    for status in ("submitted", "processing", "succeeded"):
        body = encode(legacy_body("task-1", status))
        # Even deliveries are redeliveries (one webhook-id, deduped by it); odd ones carry their own
        # webhook-id, so only the state machine can tell they repeat a status.
        deliveries = [(body, f"{status}-even" if i % 2 == 0 else f"{status}-{i}") for i in range(10)]
        # The first seven race each other for the one change; the last three repeat it afterwards.
        with ThreadPoolExecutor(max_workers=7) as pool:
            answers = list(pool.map(lambda d: _deliver(url, *d), deliveries[:7]))
        answers += [_deliver(url, *d) for d in deliveries[7:]]
        assert all(code == 200 for code, _ in answers), answers
        expected = {"duplicate": 10} if status == "submitted" else {"applied": 1, "duplicate": 9}
        assert Counter(outcome for _, outcome in answers) == expected

    with Session(committing_engine) as session:
        assert transitions_of(session, job.id) == [
            (None, "queued", "api"),
            ("queued", "submitted", "worker"),
            ("submitted", "processing", "callback"),
            ("processing", "succeeded", "callback"),
        ]
        stored = session.get(Job, job.id)
        assert stored is not None
        assert stored.status == "succeeded"
        assert len(session.scalars(select(Image).where(Image.job_id == job.id)).all()) == 2
        # Per status: one row for the redeliveries plus one per distinct webhook-id.
        assert len(session.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id)).all()) == 18


def test_a_burst_on_one_job_is_answered_without_errors(committed_pg_url: str) -> None:
    """PostgreSQL: 24 deliveries at once for one job. Each decides on an unlocked read; those that
    find the job changed at their write (all but the first, at worst) decide again under the row
    lock, so none answers an error and exactly one applies each status."""
    engine = make_engine(committed_pg_url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            job = create_job(session, {"prompt": "p", "n": 1}, provider="kling").job
            transition(session, job, "submitted", source="worker", provider_task_id="task-1")
            session.commit()
        burst = [
            (encode(legacy_body("task-1", status, n_images=1)), f"{status}-{i}")
            for i in range(12)
            for status in ("processing", "succeeded")
        ]
        with _serve(engine) as base, ThreadPoolExecutor(max_workers=len(burst)) as pool:
            url = f"{base}/callbacks/kling/{job.id}/{callback_token(TEST_CALLBACK_SECRET, job.id)}"
            answers = list(pool.map(lambda d: _deliver(url, *d), burst))
        assert {code for code, _ in answers} == {200}, answers
        outcomes = Counter(outcome for _, outcome in answers)
        assert outcomes["applied"] in (1, 2), outcomes  # succeeded, and processing if it came first
        with Session(engine) as session:
            assert session.get(Job, job.id).status == "succeeded"  # type: ignore[union-attr]
            assert len(session.scalars(select(Image).where(Image.job_id == job.id)).all()) == 1
            assert (
                len(session.scalars(select(CallbackEvent).where(CallbackEvent.job_id == job.id)).all()) == 24
            )
    finally:
        engine.dispose()
