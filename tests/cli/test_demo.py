"""`klingctl demo` end to end in a real process: embedded SQLite, memory broker, moto S3, simulator."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from models.db import make_engine, make_sessionmaker, session_scope
from models.tables import CallbackEvent, Image, Job, Transition
from tests.cli.conftest import BROKER_DB, KLINGCTL, LIMITER_REDIS, ROOT, clean_env
from tests.fixtures.services import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_a_batch_to_the_expected_end_and_verifies_s3(tmp_path: Path) -> None:
    proc = subprocess.run(
        [KLINGCTL, "demo", "--jobs", "4", "--data-dir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        env=clean_env(COLUMNS="200"),
        cwd=ROOT,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # 4 image jobs, a text_to_video and a try_on job.
    assert "PASS 6/6 jobs reached their expected state" in out
    # Where things are, printed at start.
    for label in ("database", "s3", "simulator", "dashboard", "log"):
        assert f"\n{label} " in out
    table = out[out.index("Demo jobs") :]
    rows = [line for line in table.splitlines() if line.startswith("│ ") and line.split("│")[1].strip()]
    assert len(rows) == 6
    assert sum("OK refused by provider (1301)" in r for r in rows) == 1
    assert sum("OK sha256 verified" in r for r in rows) == 5
    assert [r.split("│")[2].strip() for r in rows].count("image") == 4
    assert any("text_to_video" in r and "OK sha256 verified" in r for r in rows)
    assert any("try_on" in r and "OK sha256 verified" in r for r in rows)

    # Check the demo's own database independently of what it printed.
    [db_file] = tmp_path.glob("demo-*.db")
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            jobs = list(s.scalars(select(Job)))
            statuses = sorted((j.status, j.error_code) for j in jobs)
            assert statuses == [("archived", None)] * 5 + [("failed", "1301")]
            assert sorted(j.kind for j in jobs) == ["image"] * 4 + ["text_to_video", "try_on"]
            images = sum(j.params["n"] for j in jobs if j.status == "archived" and j.kind == "image")
            archived = s.scalar(select(func.count()).select_from(Image).where(Image.status == "archived"))
            assert archived == images + 2  # one video, one try-on image
            for job in jobs:
                output_type, ext = ("video", "mp4") if job.kind == "text_to_video" else ("image", "png")
                for output in job.images:
                    assert (output.type, output.s3_key) == (
                        output_type,
                        f"images/{job.id}/{output.index}.{ext}",
                    )
                    assert output.s3_key and output.s3_key in out
            # Callbacks came over HTTP to the real webhook, and the job whose callbacks were all
            # dropped was finished by the reconciler's polling.
            assert (s.scalar(select(func.count()).select_from(CallbackEvent)) or 0) > 0
            polled = s.scalar(select(func.count()).select_from(Transition).where(Transition.source == "poll"))
            assert polled and polled > 0
    finally:
        engine.dispose()


def test_demo_uses_the_configured_services(
    committed_pg_url: str, s3_endpoint: str, s3_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    prefix = f"test:cli:{secrets.token_hex(4)}"
    env = clean_env(
        COLUMNS="200",
        DATABASE_URL=committed_pg_url,
        CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{BROKER_DB}",
        REDIS_URL=LIMITER_REDIS,
        LIMITER_KEY_PREFIX=prefix,
        S3_ENDPOINT_URL=s3_endpoint,
        S3_BUCKET=s3_bucket,
        AWS_ACCESS_KEY_ID=S3_TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=S3_TEST_SECRET_KEY,
    )
    proc = subprocess.run(
        # Image jobs only: this test is about where the parts run, the first about what runs.
        [KLINGCTL, "demo", "--jobs", "3", "--no-kinds", "--data-dir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS 3/3" in proc.stdout
    assert f"bucket {s3_bucket}" in proc.stdout
    assert not list(tmp_path.glob("*.db"))  # no SQLite file: the jobs are in PostgreSQL
    engine = make_engine(committed_pg_url)
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            jobs = list(s.scalars(select(Job)))
            assert sorted(j.status for j in jobs) == ["archived", "archived", "failed"]
            keys = [img.s3_key for j in jobs for img in j.images]
    finally:
        engine.dispose()
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])}
    assert stored == set(keys)
    r = redis.Redis.from_url(LIMITER_REDIS)
    assert not list(r.scan_iter(match=f"*{prefix}*"))  # the demo's limiter keys are gone
    broker = redis.Redis.from_url(f"redis://127.0.0.1:6379/{BROKER_DB}")
    assert not [k for k in broker.scan_iter(match="kling-demo-*")]  # and its queue
