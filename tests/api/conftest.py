"""The app under test, bound to the real PostgreSQL test database and the moto S3 endpoint.

`api` is in-process (Flask test client) on one connection rolled back after the test; `served_api`
is the same app served over HTTP on an OS-chosen port, committing for real (`committed_pg_url`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image as PILImage
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.base import utcnow
from models.db import make_engine, make_sessionmaker
from models.enums import ImageStatus, JobStatus
from models.settings import Settings
from models.statemachine import transition
from models.tables import Image, Job
from tests.conftest import (
    TEST_API_TOKEN,
    TEST_CALLBACK_SECRET,
    TEST_SECRET_KEY,
    TEST_WEBHOOK_SECRET,
)
from tests.wsgi import serve_wsgi
from webhook import create_app
from webhook.accounts import SERVICES_KEY
from webhook.api import S3_CLIENT
from webhook.db import set_publisher
from webhook.metrics import LIMITER_KEY
from worker.accounts import LocalAccountGate
from worker.limiter_local import LocalSlotLimiter
from worker.services import Services

AUTH = {"Authorization": f"Bearer {TEST_API_TOKEN}"}
# A Standard Webhooks secret like production's (settings refuse anything else): 32-byte key.
TEST_NOTIFY_SECRET = "whsec_dGVzdC1ub3RpZnkta2V5LTAxMjM0NTY3ODlhYmNkZWY="
TEST_KLING_API_KEY = "test-kling-api-key-0123456789-abcdefghijkl"
TEST_APPYPIE_KEY = "test-appypie-key-0123456789-abcdefghijklmno"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "sqlite://",
        "api_token": SecretStr(TEST_API_TOKEN),
        "public_base_url": "https://hooks.example.com",
        "callback_secret": SecretStr(TEST_CALLBACK_SECRET),
        "kling_webhook_secret": SecretStr(TEST_WEBHOOK_SECRET),
        "kling_access_key": "test-access",
        "kling_secret_key": SecretStr(TEST_SECRET_KEY),
        "kling_api_key": SecretStr(TEST_KLING_API_KEY),
        "appypie_subscription_key": SecretStr(TEST_APPYPIE_KEY),
        "notify_secret": SecretStr(TEST_NOTIFY_SECRET),
        "kling_concurrency": 5,
        **overrides,
    }
    return Settings(**values)


@dataclass
class Api:
    app: Flask
    client: FlaskClient
    session: Session
    limiter: LocalSlotLimiter
    published: list[tuple[str, list[Any]]] = field(default_factory=list)

    def create(self, body: dict[str, Any], **headers: str) -> Any:
        return self.client.post("/v1/jobs", json=body, headers={**AUTH, **headers})

    def get(self, url: str) -> Any:
        return self.client.get(url, headers=AUTH)


def build_app(settings: Settings, factory: sessionmaker[Session], s3: Any) -> tuple[Flask, LocalSlotLimiter]:
    app = create_app(settings, session_factory=factory)
    limiter = LocalSlotLimiter(limit=settings.kling_concurrency, lease_seconds=60)
    app.extensions[LIMITER_KEY] = limiter
    app.extensions[S3_CLIENT] = s3
    # The accounts' view (GET /v1/accounts, waiting_for) on the same limiter, pauses in memory.
    app.extensions[SERVICES_KEY] = Services(
        settings, sessions=factory, limiter=limiter, account_gate=LocalAccountGate()
    )
    return app, limiter


@pytest.fixture
def api(db_engine: Engine, s3_client: Any) -> Iterator[Api]:
    with db_engine.connect() as connection:
        outer = connection.begin()
        factory = sessionmaker(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        app, limiter = build_app(make_settings(), factory, s3_client)
        env = Api(app, app.test_client(), factory(), limiter)
        set_publisher(app, lambda name, args: env.published.append((name, args)))
        try:
            yield env
        finally:
            env.session.close()
            outer.rollback()


@dataclass
class Served:
    url: str
    app: Flask
    sessions: sessionmaker[Session]
    limiter: LocalSlotLimiter


@pytest.fixture
def served_api(committed_pg_url: str, s3_client: Any) -> Iterator[Served]:
    engine = make_engine(committed_pg_url)
    factory = make_sessionmaker(engine)
    app, limiter = build_app(make_settings(), factory, s3_client)
    set_publisher(app, lambda name, args: None)
    try:
        with serve_wsgi(app) as url:
            yield Served(url, app, factory, limiter)
    finally:
        engine.dispose()


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (320, 320)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def archive_job(session: Session, job: Job, s3: Any, bucket: str, colors: list[tuple[int, int, int]]) -> None:
    """Move a queued job to archived the way the pipeline does, with real objects in S3."""
    import hashlib

    transition(session, job, JobStatus.SUBMITTED, source="worker", provider_task_id=f"task-{job.id[:8]}")
    transition(session, job, JobStatus.SUCCEEDED, source="callback")
    for index, color in enumerate(colors):
        data = png_bytes(color)
        key = f"images/{job.id}/{index}.png"
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")
        session.add(
            Image(
                job_id=job.id,
                index=index,
                source_url=f"https://cdn.klingai.com/{job.id}/{index}.png",
                status=ImageStatus.ARCHIVED.value,
                s3_bucket=bucket,
                s3_key=key,
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
                content_type="image/png",
                archived_at=utcnow(),
            )
        )
    transition(session, job, JobStatus.ARCHIVED, source="archiver")
    session.commit()
