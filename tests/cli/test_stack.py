"""The service run the way an operator runs it: `klingctl webhook`, `worker` and `beat` as processes
(gunicorn, Celery worker, Celery beat) on PostgreSQL, Redis, moto S3 and the simulator, driven by
`klingctl submit --wait` in another process."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from kling.simulator import Simulator
from tests.cli.conftest import BROKER_DB, KLINGCTL, LIMITER_REDIS, ROOT, clean_env, closed_port
from tests.conftest import TEST_ACCESS_KEY, TEST_API_TOKEN, TEST_CALLBACK_SECRET, TEST_SECRET_KEY
from tests.fixtures.services import S3_TEST_ACCESS_KEY, S3_TEST_REGION, S3_TEST_SECRET_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Processes:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [KLINGCTL, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append((name, proc))

    def check(self) -> None:
        for name, proc in self.running:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def klingctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KLINGCTL, *args],
            check=False,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
        )

    def stop(self) -> None:
        for _, proc in reversed(self.running):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass


@pytest.fixture
def running(
    committed_pg_url: str, s3_endpoint: str, s3_bucket: str, simulator: Simulator, tmp_path: Path
) -> Iterator[tuple[Processes, dict[str, str]]]:
    redis.Redis.from_url(f"redis://127.0.0.1:6379/{BROKER_DB}").flushdb()
    port = closed_port()
    prefix = f"test:cli:{secrets.token_hex(4)}"
    env = clean_env(
        DATABASE_URL=committed_pg_url,
        CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{BROKER_DB}",
        REDIS_URL=LIMITER_REDIS,
        LIMITER_KEY_PREFIX=prefix,
        KLING_API_BASE=simulator.base_url,
        KLING_ACCESS_KEY=TEST_ACCESS_KEY,
        KLING_SECRET_KEY=TEST_SECRET_KEY,
        KLING_CONCURRENCY="5",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        CALLBACK_SECRET=TEST_CALLBACK_SECRET,
        API_TOKEN=TEST_API_TOKEN,
        S3_BUCKET=s3_bucket,
        S3_ENDPOINT_URL=s3_endpoint,
        AWS_REGION=S3_TEST_REGION,
        AWS_ACCESS_KEY_ID=S3_TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=S3_TEST_SECRET_KEY,
        ARCHIVE_ALLOWED_HOSTS="127.0.0.1",
        RECONCILE_AFTER_SECONDS="1",
        RECONCILE_INTERVAL_SECONDS="0.5",
        OUTBOX_RELAY_SECONDS="0.5",
    )
    procs = Processes(env, tmp_path)
    try:
        procs.start("webhook", "webhook", "--port", str(port), "--workers", "1")
        procs.start(
            "worker",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "--pool=threads",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"cli-{secrets.token_hex(3)}@%h",
        )
        procs.start("beat", "beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat-schedule'}")
        deadline = time.monotonic() + 30
        while True:
            procs.check()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # gunicorn still booting: the socket is bound before a worker accepts
            assert time.monotonic() < deadline, procs.tail("webhook")
            time.sleep(0.1)  # polling interval of a deadline loop
        yield procs, env
    finally:
        procs.stop()
        r = redis.Redis.from_url(LIMITER_REDIS)
        keys = list(r.scan_iter(match=f"*{prefix}*"))
        if keys:
            r.delete(*keys)


def test_submit_wait_through_webhook_worker_and_beat(
    running: tuple[Processes, dict[str, str]], s3_client: Any, s3_bucket: str
) -> None:
    procs, _ = running
    done = procs.klingctl("submit", "a red fox in snow", "--n", "2", "--aspect-ratio", "3:2", "--wait")
    assert done.returncode == 0, done.stderr + "\n" + procs.tail("worker")
    job_id, *locations = done.stdout.splitlines()
    assert len(locations) == 2
    for index, line in enumerate(locations):
        uri, sha = line.split(" sha256=")
        assert uri == f"s3://{s3_bucket}/images/{job_id}/{index}.png"
        body = s3_client.get_object(Bucket=s3_bucket, Key=f"images/{job_id}/{index}.png")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha

    shown = procs.klingctl("show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "archiver" in shown.stdout
    # The provider's callbacks went over HTTP to the gunicorn-served webhook.
    sources = [line.split("│")[4].strip() for line in shown.stdout.splitlines() if line.count("│") == 6]
    assert sources[:1] == ["api"] and "callback" in sources and sources[-1] == "archiver", shown.stdout
    listed = procs.klingctl("jobs", "--status", "archived")
    assert job_id in listed.stdout

    refused = procs.klingctl("submit", "something [policy] forbidden", "--wait")
    assert refused.returncode == 1
    refused_id = refused.stdout.strip()
    assert "failed" in refused.stderr and "1301" in refused.stderr
    assert refused_id in procs.klingctl("jobs", "--status", "failed").stdout
