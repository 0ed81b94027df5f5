"""A whole deployment on this machine for end-to-end tests.

Real parts, real wires: PostgreSQL (migrated test database), Redis (broker and limiter), moto's S3
server over HTTP, the Kling simulator over HTTP, the real webhook served by a threaded werkzeug
server, and a real Celery worker (with embedded beat) in a subprocess.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from kling.simulator import Simulator
from klingctl.ops import celery_argv
from models.db import make_engine, make_sessionmaker, session_scope
from models.settings import Settings
from models.statemachine import create_job
from models.tables import Image, Job
from tests.conftest import TEST_ACCESS_KEY, TEST_CALLBACK_SECRET, TEST_SECRET_KEY, TEST_WEBHOOK_SECRET
from tests.fixtures.services import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY
from worker.factory import make_celery
from worker.outbox import relay
from worker.tasks import TASK_NAMES

ROOT = Path(__file__).resolve().parents[2]
# Redis db used as the Celery broker by these tests only (flushed per stack); another db for a
# second checkout running them at the same time on the same Redis.
BROKER_DB = int(os.environ.get("KLING_TEST_BROKER_DB", "13"))
FINAL = {"archived", "failed"}


class Stack:
    def __init__(self, settings: Settings, simulator: Simulator) -> None:
        self.settings = settings
        self.simulator = simulator
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.celery = make_celery(settings)
        self.worker: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kling-worker-{secrets.token_hex(4)}.log"

    def publish(self, name: str, args: list[Any]) -> None:
        self.celery.send_task(TASK_NAMES[name], args=args)

    # --- jobs ---------------------------------------------------------------------------------------
    def submit(self, params: dict[str, Any], **kwargs: Any) -> str:
        with session_scope(self.sessions) as s:
            job = create_job(s, params, provider=self.settings.kling_provider, **kwargs).job
            job_id = job.id
        relay(self.sessions, self.publish)
        return job_id

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        with session_scope(self.sessions) as s:
            rows = s.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all()
        return {job_id: status for job_id, status in rows}

    def wait_final(self, job_ids: list[str], *, timeout: float = 120.0) -> dict[str, str]:
        """Poll the database until every job is archived or failed (or the deadline passes)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses(job_ids)
            if all(statuses.get(j) in FINAL for j in job_ids):
                return statuses
            if time.monotonic() > deadline:
                pending = {j: s for j, s in statuses.items() if s not in FINAL}
                raise AssertionError(f"{len(pending)} job(s) not final: {pending}\n{self.worker_log()}")
            self._check_worker()
            time.sleep(0.2)  # polling interval of a deadline loop, not synchronisation

    def jobs(self, job_ids: list[str]) -> list[Job]:
        with session_scope(self.sessions) as s:
            jobs = list(s.scalars(select(Job).where(Job.id.in_(job_ids))))
            for job in jobs:
                _ = job.images, job.transitions  # load before the session closes
            return jobs

    def images(self, job_id: str) -> list[Image]:
        with session_scope(self.sessions) as s:
            return list(s.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)))

    # --- processes ----------------------------------------------------------------------------------
    def start_worker(self, *, concurrency: int = 4, beat: bool = True) -> None:
        env = {
            **os.environ,
            **self.settings.to_env(),
            "PYTHONPATH": str(ROOT),
            "AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY,
        }
        cmd = celery_argv(
            "worker",
            (
                "--loglevel=INFO",
                f"--concurrency={concurrency}",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"test-{secrets.token_hex(3)}@%h",
            ),
        )
        if beat:
            cmd += ["-B", f"--schedule={self.log_path.with_suffix('.beat')}"]
        log = self.log_path.open("wb")
        self.worker = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _check_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            raise AssertionError(f"worker exited with {self.worker.returncode}\n{self.worker_log()}")

    def worker_log(self, tail: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        try:
            os.killpg(self.worker.pid, signal.SIGTERM)
            self.worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(timeout=10)
        except ProcessLookupError:
            pass
        self.worker = None

    def close(self) -> None:
        self.stop_worker()
        self.engine.dispose()
        r = redis.Redis.from_url(self.settings.limiter_redis_url)
        keys = list(r.scan_iter(match=f"*{self.settings.limiter_key_prefix}*"))
        if keys:
            r.delete(*keys)


def base_settings(
    *,
    database_url: str,
    simulator: Simulator,
    s3_endpoint: str,
    bucket: str,
    concurrency: int,
    public_base_url: str | None,
    **extra: Any,
) -> Settings:
    broker = f"redis://127.0.0.1:6379/{BROKER_DB}"
    # `extra` may override any of these (a dict merge: keyword arguments could not repeat one).
    values: dict[str, Any] = dict(
        database_url=database_url,
        celery_broker_url=broker,
        redis_url="redis://127.0.0.1:6379/15",
        limiter_key_prefix=f"test:limiter:{secrets.token_hex(4)}",
        # 5001 pauses the account until a probe: short here, as the other intervals of these stacks.
        account_probe_seconds=2.0,
        kling_api_base=simulator.base_url,
        kling_access_key=TEST_ACCESS_KEY,
        kling_secret_key=TEST_SECRET_KEY,
        kling_concurrency=concurrency,
        public_base_url=public_base_url,
        callback_secret=TEST_CALLBACK_SECRET,
        s3_bucket=bucket,
        s3_endpoint_url=s3_endpoint,
        aws_region="us-east-1",
        archive_allowed_hosts="127.0.0.1",
        reconcile_after_seconds=1.0,
        reconcile_interval_seconds=0.5,
        outbox_relay_seconds=0.5,
        # A create whose answer was lost (accept_then_drop) holds its job's claim this long before
        # the reconciler runs the submit again (a lookup first): 6 s as in the chaos stack. At the
        # 60 s default one such job kept the fault test waiting a minute (78 s of its run).
        stuck_submit_seconds=6.0,
        notify_secret=TEST_WEBHOOK_SECRET,
        # The downstream receivers in these tests listen on this machine.
        notify_allowed_hosts="localhost,127.0.0.1",
    )
    return Settings(**{**values, **extra})


def flush_broker() -> None:
    redis.Redis.from_url(f"redis://127.0.0.1:6379/{BROKER_DB}").flushdb()
