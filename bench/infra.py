"""The parts a benchmark needs, each started on 127.0.0.1 and stopped afterwards.

Servers run as subprocesses (moto, the simulator, gunicorn, Celery) so their CPU and memory are
not charged to the measuring process, and they bind port 0: the port is read from their log line.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import requests

from klingctl.ops import GUNICORN_CONFIG, celery_argv
from models.db import scratch_database
from models.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# Overridable so two benchmark runs on one Redis do not flush each other's keys.
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "11"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

# Long keys: PyJWT warns on HMAC keys shorter than 32 bytes.
ACCESS_KEY = "bench-access-key-0123456789"
SECRET_KEY = "bench-secret-key-0123456789-abcdefghijklmnop"
CALLBACK_SECRET = "bench-callback-secret-0123456789-abcdefghijkl"
API_TOKEN = "bench-api-token-0123456789-abcdefghijklmnop"
S3_ACCESS_KEY = "bench-access-key"
S3_SECRET_KEY = "bench-secret-key"
S3_REGION = "us-east-1"

GUNICORN_WORKERS = 4
GUNICORN_CLASS = "sync"
START_TIMEOUT = 60.0


class Proc:
    """A subprocess in its own session, its output in a log file we can search."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        fd, path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self, tail: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Poll the log until `pattern` appears (deadline loop), failing early if the process died."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not print {pattern!r} in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.log_path.unlink(missing_ok=True)


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


# --- CPU --------------------------------------------------------------------------------------------
def cpu_by_process() -> dict[str, float]:
    """CPU seconds used so far: by this host's PostgreSQL and Redis processes, and by each session
    (a `Proc` leads one, its children in it: gunicorn's workers, Celery's pool), keyed
    `session:<id>` (the leader's pid). Processes that already exited are not counted."""
    totals: dict[str, float] = defaultdict(float)
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        totals[f"session:{fields[3]}"] += cpu
        if b"postgres" in command:
            totals["postgres"] += cpu
        elif b"redis-server" in command:
            totals["redis"] += cpu
    return totals


# --- PostgreSQL -------------------------------------------------------------------------------------
@contextmanager
def private_database(*, migrate: bool = True) -> Iterator[str]:
    """A database made for this benchmark (migrated), dropped afterwards."""
    with scratch_database(PG_ADMIN_URL, prefix="kling_bench", migrate=migrate) as url:
        yield url


# --- Redis ------------------------------------------------------------------------------------------
def flush_redis() -> None:
    """Empty the benchmarks' own Redis database (never any other)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    client.flushdb()
    client.close()


# --- S3 ---------------------------------------------------------------------------------------------
@contextmanager
def moto_server() -> Iterator[str]:
    proc = Proc("moto", [sys.executable, "-m", "bench.moto_server"])
    with running(proc):
        yield proc.wait_for(r"listening (http://\S+)").group(1)


def s3_client(endpoint: str) -> Any:
    from worker.s3 import make_s3_client

    return make_s3_client(
        endpoint_url=endpoint, region=S3_REGION, access_key_id=S3_ACCESS_KEY, secret_access_key=S3_SECRET_KEY
    )


def new_bucket(endpoint: str) -> str:
    name = f"bench-{secrets.token_hex(6)}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


# --- the simulator ----------------------------------------------------------------------------------
@contextmanager
def simulator(*, concurrency: int, task_seconds: float, **knobs: Any) -> Iterator[str]:
    """`klingctl simulator` in its own process; yields its base URL (use SimulatorRemote to inspect)."""
    import json

    cmd = [
        str(BIN / "klingctl"),
        "simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--access-key",
        ACCESS_KEY,
        "--secret-key",
        SECRET_KEY,
        "--concurrency",
        str(concurrency),
        "--task-seconds",
        str(task_seconds),
        "--seed",
        "7",
    ]
    for name, value in knobs.items():
        cmd += ["--set", f"{name}={json.dumps(value)}"]
    proc = Proc("simulator", cmd)
    with running(proc):
        yield proc.wait_for(r"listening on (http://\S+)").group(1)


# --- gunicorn ---------------------------------------------------------------------------------------
@contextmanager
def gunicorn(app: str, env: Mapping[str, str], *, ready_path: str = "/healthz") -> Iterator[str]:
    """Serve a WSGI app spec (e.g. `webhook:create_app()`) with the benchmarks' gunicorn settings."""
    with gunicorn_proc(app, env, ready_path=ready_path) as (base, _):
        yield base


@contextmanager
def gunicorn_proc(
    app: str, env: Mapping[str, str], *, ready_path: str = "/healthz"
) -> Iterator[tuple[str, Proc]]:
    """`gunicorn`, and its process: the master leads a session of its own, its workers in it."""
    cmd = [
        str(BIN / "gunicorn"),
        # The service's own settings module, for the baseline too: same server settings.
        "--config",
        GUNICORN_CONFIG,
        "--bind",
        "127.0.0.1:0",
        "--workers",
        str(GUNICORN_WORKERS),
        "--worker-class",
        GUNICORN_CLASS,
        "--backlog",
        "256",
        app,
    ]
    proc = Proc("gunicorn", cmd, env)
    with running(proc):
        base = proc.wait_for(r"Listening at: (http://\S+)").group(1)
        wait_http(f"{base}{ready_path}", proc)
        yield base, proc


def wait_http(url: str, proc: Proc | None = None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code < 500:
                return
        except requests.RequestException:
            pass
        if proc is not None:
            proc.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout} s")
        time.sleep(0.1)


# --- Celery -----------------------------------------------------------------------------------------
@contextmanager
def celery_worker(env: Mapping[str, str], *, concurrency: int, beat: bool = True) -> Iterator[Proc]:
    schedule = Path(tempfile.gettempdir()) / f"bench-beat-{secrets.token_hex(4)}"
    cmd = celery_argv(
        "worker",
        (
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"bench-{secrets.token_hex(3)}@%h",
        ),
    )
    if beat:
        cmd += ["-B", f"--schedule={schedule}"]
    proc = Proc("celery", cmd, env)
    try:
        with running(proc):
            yield proc
    finally:
        for leftover in schedule.parent.glob(schedule.name + "*"):
            leftover.unlink(missing_ok=True)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that make another process build the same Settings."""
    env = settings.to_env()
    env["AWS_ACCESS_KEY_ID"] = S3_ACCESS_KEY
    env["AWS_SECRET_ACCESS_KEY"] = S3_SECRET_KEY
    return env


def bench_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "celery_broker_url": REDIS_URL,
        "redis_url": REDIS_URL,
        "limiter_key_prefix": f"bench:limiter:{secrets.token_hex(4)}",
        "kling_access_key": ACCESS_KEY,
        "kling_secret_key": SECRET_KEY,
        "callback_secret": CALLBACK_SECRET,
        "api_token": API_TOKEN,
        "aws_region": S3_REGION,
        "archive_allowed_hosts": "127.0.0.1",
        "log_level": "WARNING",
    }
    return Settings(**{**base, **overrides})
