"""Helpers for the klingctl tests: run the CLI in-process against a given environment, seed jobs."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from klingctl.cli import main
from models.base import utcnow
from models.db import make_engine, make_sessionmaker, session_scope, upgrade
from models.enums import JobStatus
from models.settings import get_settings
from models.statemachine import transition
from models.tables import Image, Job
from tests.factories import make_job

ROOT = Path(__file__).resolve().parents[2]
KLINGCTL = str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "klingctl")
# Configuration the CLI must never pick up from the developer's shell during a test.
SERVICE_VARS = ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "S3_ENDPOINT_URL", "PUBLIC_BASE_URL")

Run = Callable[..., Result]

# The Redis databases the process tests (test_stack, test_demo) use as broker and limiter.
BROKER_DB = 12
LIMITER_REDIS = "redis://127.0.0.1:6379/15"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    """os.environ without the service variables, plus `values` (for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS and not k.startswith("KLING")}
    env.update(values)
    return env


@pytest.fixture
def cli() -> Iterator[Run]:
    """`cli(args, **env)`: run klingctl in-process with exactly these service settings."""

    def run(args: list[str], **env: str) -> Result:
        full: dict[str, str | None] = dict.fromkeys(SERVICE_VARS)
        full.update(env)
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(main, args, env=full, catch_exceptions=False)
        finally:
            get_settings.cache_clear()

    yield run


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """A migrated SQLite database of its own (committed writes, nothing shared between tests)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def add_job(
    engine: Engine, status: str = "queued", *, n: int = 1, prompt: str = "a cat", **fields: Any
) -> str:
    """A job moved to `status` the way the pipeline moves it (transitions written, images added)."""
    with session_scope(make_sessionmaker(engine)) as s:
        return make_job(
            s, status, n=n, prompt=prompt, fail_after="queued", error_message="policy", **fields
        ).id


def archive_images(engine: Engine, job_id: str, bucket: str) -> list[Image]:
    """Mark every image archived (as the archiver does) and the job archived."""
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        for img in job.images:
            img.status = "archived"
            img.s3_bucket, img.s3_key = bucket, f"images/{job_id}/{img.index}.png"
            img.sha256, img.bytes, img.content_type = f"{img.index:064x}", 100 + img.index, "image/png"
            img.archived_at = utcnow()
        transition(s, job, JobStatus.ARCHIVED, source="archiver")
        return list(job.images)


def age_images(engine: Engine, job_id: str, days: float) -> None:
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        created: datetime = utcnow() - timedelta(days=days)
        for img in job.images:
            img.provider_created_at = created
