"""The whole deployment as subprocesses on 127.0.0.1, every server private to this run.

PostgreSQL and Redis are fresh instances on OS-chosen ports, moto serves S3 behind a fault proxy,
the simulator runs as `klingctl simulator`, the webhook under gunicorn, two Celery workers and one
beat. The driver (this process) submits jobs over the HTTP API and reads the results straight from
the database, the simulator's `/_sim` inspection and S3.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from chaos.procs import POLL, PostgresServer, Proc, RedisServer, free_port, port_open, wait_until
from chaos.s3proxy import S3FaultProxy
from kling.simulator import SimulatorRemote
from klingctl.ops import GUNICORN_CONFIG, celery_argv
from models.db import make_engine, make_sessionmaker, session_scope, upgrade
from models.tables import Image, Job
from worker.limiter import RedisSlotLimiter

ROOT = Path(__file__).resolve().parents[1]
FINAL = {"archived", "failed"}
RATIOS = ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3"]
FAIL_MARKER = "[fail]"  # the simulator ends these tasks `failed`: the expected failures
HTTP_TIMEOUT = 10.0
BUCKET = "chaos-archive"
AWS_KEY, AWS_SECRET, AWS_REGION = "chaos-access-key", "chaos-secret-key", "us-east-1"
LIMITER_PREFIX = "chaos:limiter"


@dataclass(frozen=True)
class Tuning:
    """How fast the stack notices lost work; short values so each scenario ends in seconds."""

    concurrency: int = 20
    task_seconds: float = 2.0
    workers: int = 2
    worker_concurrency: int = 3
    reconcile_after_seconds: float = 2.0
    reconcile_interval_seconds: float = 1.0
    outbox_relay_seconds: float = 1.0
    slot_lease_seconds: float = 20.0
    stuck_submit_seconds: float = 6.0
    stuck_archive_seconds: float = 15.0
    # How often a paused account is probed (pack-runs-dry); the service's default is 30.
    account_probe_seconds: float = 5.0


@dataclass(frozen=True)
class JobSpec:
    id: str
    n: int
    expect: str  # "archived" or "failed"


@dataclass
class Check:
    """What the invariants found for one batch of jobs."""

    archived: int = 0
    failed: int = 0
    unexpected: int = 0
    duplicates: int = 0
    bad_images: int = 0
    leaked_slots: int = 0
    provider_slots: int = 0


class ChaosStack:
    def __init__(self, root: Path, tuning: Tuning) -> None:
        self.root = root
        self.tuning = tuning
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg = PostgresServer(root / "pg")
        self.redis = RedisServer(root / "redis", env=self._base_env())
        self.moto_port = free_port()
        self.sim_port = free_port()
        self.web_port = free_port()
        self.moto = self._proc(
            "moto",
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.moto_port),
            ],
        )
        self.proxy = S3FaultProxy(f"http://127.0.0.1:{self.moto_port}")
        self.api_token = secrets.token_hex(32)
        self.callback_secret = secrets.token_hex(32)
        self.access_key = "chaos-" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(32)
        self.sim_proc = self._proc(
            "simulator",
            [
                sys.executable,
                "-m",
                "klingctl",
                "simulator",
                "--port",
                str(self.sim_port),
                "--access-key",
                self.access_key,
                "--secret-key",
                self.secret_key,
                "--concurrency",
                str(tuning.concurrency),
                "--task-seconds",
                str(tuning.task_seconds),
            ],
        )
        self.sim = SimulatorRemote(self.sim_url, timeout=HTTP_TIMEOUT)
        self.workers: list[Proc] = []
        self.supervised_restarts: list[str] = []
        self.beat: Proc | None = None
        self.webhook: Proc | None = None
        self.http = requests.Session()
        self._engine: Any = None
        self._sessions: Any = None
        self.limiter: RedisSlotLimiter | None = None
        self.s3: Any = None
        # Settings on top of the base ones for every service process (`reconfigure`).
        self.env_overrides: dict[str, str] = {}

    # --- wiring -------------------------------------------------------------------------------------
    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    @property
    def sessions(self) -> Any:
        """The stack database's sessionmaker (after `start`)."""
        return self._sessions

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _base_env(self) -> dict[str, str]:
        # Nothing from the caller's own deployment may leak into the private stack.
        prefixes = ("KLING_", "APPYPIE_", "AWS_", "S3_", "DATABASE_", "CELERY_", "REDIS_", "PUBLIC_", "API_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def settings_env(self) -> dict[str, str]:
        t = self.tuning
        return {
            **self._base_env(),
            "DATABASE_URL": self.pg.url,
            "CELERY_BROKER_URL": self.redis.url(0),
            "REDIS_URL": self.redis.url(1),
            "LIMITER_KEY_PREFIX": LIMITER_PREFIX,
            "KLING_API_BASE": self.sim_url,
            "KLING_ACCESS_KEY": self.access_key,
            "KLING_SECRET_KEY": self.secret_key,
            "KLING_CONCURRENCY": str(t.concurrency),
            "PUBLIC_BASE_URL": self.web_url,
            "CALLBACK_SECRET": self.callback_secret,
            "API_TOKEN": self.api_token,
            "S3_BUCKET": BUCKET,
            "S3_ENDPOINT_URL": self.proxy.url,
            "AWS_ACCESS_KEY_ID": AWS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_REGION": AWS_REGION,
            "ARCHIVE_ALLOWED_HOSTS": "127.0.0.1",
            "RECONCILE_AFTER_SECONDS": str(t.reconcile_after_seconds),
            "RECONCILE_INTERVAL_SECONDS": str(t.reconcile_interval_seconds),
            "OUTBOX_RELAY_SECONDS": str(t.outbox_relay_seconds),
            "SLOT_LEASE_SECONDS": str(t.slot_lease_seconds),
            "STUCK_SUBMIT_SECONDS": str(t.stuck_submit_seconds),
            "STUCK_ARCHIVE_SECONDS": str(t.stuck_archive_seconds),
            "ACCOUNT_PROBE_SECONDS": str(t.account_probe_seconds),
            "LOG_LEVEL": "INFO",
            **self.env_overrides,
        }

    def _proc(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        return Proc(name, cmd, env=env or self._base_env(), cwd=ROOT, log=self.logs / f"{name}.log")

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.pg.init()
        upgrade(self.pg.url)
        self._engine = make_engine(self.pg.url)
        self._sessions = make_sessionmaker(self._engine)
        self.redis.start()
        self.limiter = RedisSlotLimiter(
            self.redis.url(1), limit=self.tuning.concurrency, lease_seconds=60, key_prefix=LIMITER_PREFIX
        )
        self.moto.start()
        wait_until(lambda: port_open(self.moto_port), timeout=30, what="moto")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.moto_port}",
            aws_access_key_id=AWS_KEY,
            aws_secret_access_key=AWS_SECRET,
            region_name=AWS_REGION,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=30,
            ),
        )
        self.s3.create_bucket(Bucket=BUCKET)
        self.proxy.start()
        self.sim_proc.start()
        wait_until(lambda: self.sim.stats() is not None, timeout=30, what="simulator")
        self.start_webhook()
        for i in range(self.tuning.workers):
            self.workers.append(self._worker_proc(i))
            self.start_worker(i)
        self.beat = self._beat_proc().start()

    def _beat_proc(self) -> Proc:
        schedule = f"--schedule={self.root / 'beat-schedule'}"
        return self._proc("beat", celery_argv("beat", ("--loglevel=INFO", schedule)), env=self.settings_env())

    def reconfigure(self, overrides: dict[str, str]) -> None:
        """Restart the webhook, the workers and beat with `overrides` on top of the base settings
        (`{}`: back to the base). Queued work waits in the broker meanwhile."""
        self.env_overrides = dict(overrides)
        for proc in [*self.workers, self.beat, self.webhook]:
            if proc is not None:
                proc.stop(grace=10)
        self.start_webhook()
        self.workers = [self._worker_proc(i) for i in range(self.tuning.workers)]
        for i in range(len(self.workers)):
            self.start_worker(i)
        self.beat = self._beat_proc().start()

    def close(self) -> None:
        for proc in [*self.workers, self.beat, self.webhook, self.sim_proc, self.moto]:
            if proc is not None:
                proc.stop(grace=10)
        self.proxy.close()
        self.redis.stop()
        if self._engine is not None:
            self._engine.dispose()
        self.pg.close()
        self.sim.close()
        self.http.close()

    def start_webhook(self) -> None:
        self.webhook = self._proc(
            "webhook",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                GUNICORN_CONFIG,
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--timeout",
                "30",
                "webhook:create_app()",
            ],
            env=self.settings_env(),
        ).start()
        wait_until(self._webhook_healthy, timeout=30, what="webhook")

    def _webhook_healthy(self) -> bool:
        return self.http.get(f"{self.web_url}/healthz", timeout=HTTP_TIMEOUT).status_code == 200

    def _worker_proc(self, i: int) -> Proc:
        return self._proc(
            f"worker{i}",
            celery_argv(
                "worker",
                (
                    "--loglevel=INFO",
                    f"--concurrency={self.tuning.worker_concurrency}",
                    "--without-gossip",
                    "--without-mingle",
                    "-n",
                    f"chaos{i}@%h",
                ),
            ),
            env=self.settings_env(),
        )

    def start_worker(self, i: int) -> None:
        proc = self.workers[i]
        # Readiness is the "ready." line of this start, so count the ones already in the log.
        before = proc.tail(100_000).count(" ready.")
        proc.start()
        wait_until(lambda: proc.tail(100_000).count(" ready.") > before, timeout=60, what=f"worker {i}")

    def kill_worker(self, i: int) -> None:
        self.workers[i].kill()

    def _supervise(self) -> None:
        """Restart a worker that exited on its own, as the deployment's supervisor would (compose's
        `restart: unless-stopped`, systemd). Celery 5.7's worker can exit with "Unrecoverable
        error" when the Redis broker vanishes mid-operation (kombu's restore_unacked); that is a
        process crash to survive, not a lost job: the jobs' state is in PostgreSQL."""
        for i, proc in enumerate(self.workers):
            if not proc.alive:
                self.supervised_restarts.append(proc.name)
                self.start_worker(i)

    def heal(self) -> list[str]:
        """Bring back whatever is down (a scenario that broke off half-way); returns what it restarted."""
        healed: list[str] = []
        if not self.redis.proc.alive:
            self.redis.start()
            healed.append("redis")
        if not (self.pg.data / "postmaster.pid").exists():
            self.pg.start()
            healed.append("postgres")
        if self.webhook is None or not self.webhook.alive:
            self.start_webhook()
            healed.append("webhook")
        for i, proc in enumerate(self.workers):
            if not proc.alive:
                self.start_worker(i)
                healed.append(proc.name)
        for other in (self.beat, self.sim_proc, self.moto):
            if other is not None and not other.alive:
                raise RuntimeError(f"{other.name} exited on its own:\n{other.tail()}")
        return healed

    # --- jobs ---------------------------------------------------------------------------------------
    def submit(self, tag: str, count: int, rng: random.Random, *, timeout: float = 60.0) -> list[JobSpec]:
        """Create `count` jobs through the HTTP API (mixed n 1..4, every tenth one bound to fail)."""
        specs: list[JobSpec] = []
        for i in range(count):
            n = rng.randint(1, 4)
            fails = i % 10 == 9
            body = {
                "prompt": f"chaos {tag} {i}" + (f" {FAIL_MARKER}" if fails else ""),
                "n": n,
                "aspect_ratio": rng.choice(RATIOS),
            }
            job_id = self.post_job(body, idempotency_key=f"{tag}-{i}", timeout=timeout)
            specs.append(JobSpec(job_id, n, "failed" if fails else "archived"))
        return specs

    def post_job(
        self,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        timeout: float,
        http: requests.Session | None = None,
    ) -> str:
        """Create one job, retrying until `timeout`; `http`: the calling thread's own session."""
        headers = {"Authorization": f"Bearer {self.api_token}", "Idempotency-Key": idempotency_key}
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = (http or self.http).post(
                    f"{self.web_url}/v1/jobs", json=body, headers=headers, timeout=HTTP_TIMEOUT
                )
                if resp.status_code in (200, 202):
                    return str(resp.json()["id"])
                error = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.RequestException as exc:
                error = str(exc)
            # The same Idempotency-Key makes a retry safe whatever happened to the first try.
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot create a job: {error}")
            time.sleep(POLL)

    def provider_task(self, ids: list[str]) -> tuple[str, str] | None:
        """One of `ids` that has a provider task, with the task's id (None if none has yet)."""
        with session_scope(self._sessions) as s:
            row = s.execute(
                select(Job.id, Job.provider_task_id)
                .where(Job.id.in_(ids), Job.provider_task_id.is_not(None))
                .limit(1)
            ).first()
        return (row[0], row[1] or "") if row is not None else None

    def statuses(self, ids: list[str]) -> dict[str, str]:
        with session_scope(self._sessions) as s:
            return {
                job_id: status
                for job_id, status in s.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))
            }

    def count_status(self, ids: list[str], *wanted: str) -> int:
        """How many of `ids` are in one of `wanted` (0 while the database is unreachable)."""
        try:
            return sum(1 for s in self.statuses(ids).values() if s in wanted)
        except SQLAlchemyError:
            return 0

    def wait_final(self, ids: list[str], *, timeout: float) -> dict[str, str]:
        """Poll until every job is archived or failed, or the deadline passes; returns the last view."""
        deadline = time.monotonic() + timeout
        statuses: dict[str, str] = {}
        while True:
            self._supervise()
            with contextlib.suppress(SQLAlchemyError):  # the database may be down on purpose
                statuses = self.statuses(ids)
            if len(statuses) == len(ids) and all(s in FINAL for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                return statuses
            time.sleep(POLL * 5)

    # --- invariants ---------------------------------------------------------------------------------
    def check(self, specs: list[JobSpec], statuses: dict[str, str], problems: list[str]) -> Check:
        result = Check()
        for spec in specs:
            status = statuses.get(spec.id, "missing")
            if status == "archived":
                result.archived += 1
            elif status == "failed":
                result.failed += 1
            if status != spec.expect:
                result.unexpected += 1
                problems.append(f"job {spec.id} is {status}, expected {spec.expect}")

        per_job: dict[str, int] = {}
        for task in self.sim.tasks():
            ext = task.get("external_task_id")
            if ext:
                per_job[ext] = per_job.get(ext, 0) + 1
        for spec in specs:
            count = per_job.get(spec.id, 0)
            if count > 1:
                result.duplicates += count - 1
                problems.append(f"job {spec.id} has {count} provider tasks")
            elif count == 0:
                problems.append(f"job {spec.id} has no provider task")

        result.bad_images = self._check_images(
            [s for s in specs if statuses.get(s.id) == "archived"], problems
        )
        result.leaked_slots = self._wait_slots_free()
        if result.leaked_slots:
            assert self.limiter is not None
            problems.append(f"{result.leaked_slots} slot(s) still leased: {self.limiter.holders()}")
        result.provider_slots = int(self.sim.stats()["slots_in_use"])
        if result.provider_slots:
            problems.append(f"the simulator still counts {result.provider_slots} slot(s) in use")
        return result

    def _check_images(self, specs: list[JobSpec], problems: list[str]) -> int:
        """Every archived image: S3 bytes, the database's hash and the provider's hash all agree."""
        bad = 0
        with session_scope(self._sessions) as s:
            rows = s.execute(
                select(Job.id, Job.provider_task_id, Image.index, Image.status, Image.s3_key, Image.sha256)
                .join(Image, Image.job_id == Job.id)
                .where(Job.id.in_([spec.id for spec in specs]))
                .order_by(Job.id, Image.index)
            ).all()
        seen: dict[str, int] = {}
        for job_id, task_id, index, status, key, sha in rows:
            seen[job_id] = seen.get(job_id, 0) + 1
            source = self.sim.image_sha256(task_id or "", index)
            stored = (
                hashlib.sha256(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest()
                if key
                else ""
            )
            if status != "archived" or not (source == sha == stored):
                bad += 1
                problems.append(f"job {job_id} image {index}: {status}, source {source} db {sha} s3 {stored}")
        for spec in specs:
            if seen.get(spec.id, 0) != spec.n:
                bad += 1
                problems.append(f"job {spec.id} has {seen.get(spec.id, 0)} image(s), expected {spec.n}")
        return bad

    def _wait_slots_free(self, timeout: float = 10.0) -> int:
        """Slots come back through release messages; give them a moment (shorter than a lease)."""
        assert self.limiter is not None
        deadline = time.monotonic() + min(timeout, self.tuning.slot_lease_seconds / 2)
        while True:
            in_use = self.limiter.in_use()
            if in_use == 0 or time.monotonic() > deadline:
                return in_use
            time.sleep(POLL * 2)
