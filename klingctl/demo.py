"""`klingctl demo`: the whole service in one process, a batch of jobs, and proof every image was kept.

Every part is the real one over real wires: the simulator answers HTTP, its callbacks reach the
real webhook over HTTP, the Celery worker and beat run in threads of this process, boto3 talks
HTTP to an S3 endpoint. With DATABASE_URL / CELERY_BROKER_URL / S3_ENDPOINT_URL set, those
services are used instead of the embedded SQLite file, memory broker and moto server.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select
from werkzeug.serving import BaseWSGIServer, make_server

from klingctl.common import console, safe_url, settings
from klingctl.demo_pack import ACCOUNT_CODES, PROBE_SECONDS, PackOutage, dry_after
from klingctl.render import counts_panel, status_text
from klingctl.stopping import stop_raises, wait_for_stop
from models.db import session_scope
from models.enums import ImageStatus, JobStatus
from models.settings import Settings
from models.tables import Image, Job

log = logging.getLogger(__name__)

RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
SUBJECTS = (
    "a lighthouse at dawn",
    "a fox in fresh snow",
    "a tram in Lisbon",
    "a bowl of ramen",
    "a glass greenhouse",
    "an old sailing ship",
    "a desert at night",
    "a red bicycle",
)
EMBEDDED_BUCKET = "kling-demo"
POLICY_CODE = "1301"
# Short provider tasks, and a reconciler that steps in after one quiet second, keep the demo brief.
TASK_SECONDS = 1.0
RECONCILE_AFTER_SECONDS = 1.0
CONCURRENCY = 8
WORKER_THREADS = 4
REFRESH_SECONDS = 0.25


@dataclass
class DemoJob:
    id: str
    params: dict[str, Any]
    expect: str  # "archived", or "failed" for the content-policy job
    callbacks_dropped: bool = False


@dataclass
class Verdict:
    job_id: str
    status: str
    n: int
    ratio: str
    keys: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    ok: bool = False
    note: str = ""


def plan_batch(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` job requests: n 1..4, every aspect ratio, one prompt the provider refuses (policy)."""
    import random

    rng = random.Random(seed)  # noqa: S311  (variety, not security)
    policy_at = min(2, count - 1)
    batch = []
    for i in range(count):
        subject = SUBJECTS[i % len(SUBJECTS)]
        prompt = f"{subject}, [policy] violent content" if i == policy_at else f"{subject}, film photo"
        batch.append({"prompt": prompt, "n": 1 + (i + rng.randrange(4)) % 4, "aspect_ratio": RATIOS[i % 8]})
    return batch


@contextmanager
def serve(server: BaseWSGIServer, name: str) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class LazyApp:
    """Lets the webhook server bind (and learn its port) before the app that needs that URL exists."""

    def __init__(self) -> None:
        self.app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


class Demo:
    """Starts every part, runs a batch, verifies it, and stops every part (also on Ctrl-C)."""

    def __init__(
        self,
        base: Settings,
        *,
        env: Mapping[str, str],
        data_dir: Path,
        out: Console,
        drop_rate: float,
        seed: int,
        dry_pack: bool = True,
    ) -> None:
        self.base = base
        self.dry_pack = dry_pack
        self.outage: PackOutage | None = None
        self.env = env
        self.data_dir = data_dir
        self.out = out
        self.drop_rate = drop_rate
        self.seed = seed
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = data_dir / f"demo-{self.stamp}.log"
        self.stack = ExitStack()
        self.finally_: list[Callable[[], None]] = []
        self.where: dict[str, str] = {}

    # --- parts --------------------------------------------------------------------------------------
    def _logging(self) -> None:
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s")
        )
        root = logging.getLogger()
        previous = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)

        def restore() -> None:
            root.removeHandler(handler)
            root.setLevel(previous)
            handler.close()

        self.stack.callback(restore)

    def _database(self) -> str:
        from models.db import upgrade

        url = self.env.get("DATABASE_URL") or f"sqlite:///{self.data_dir / f'demo-{self.stamp}.db'}"
        upgrade(url)
        self.where["database"] = safe_url(url)
        return url

    def _s3(self) -> tuple[Any, str | None, str, str]:
        """(client, endpoint, bucket, region): the configured endpoint, or moto on 127.0.0.1."""
        from worker.s3 import make_s3_client

        region = self.base.aws_region or "us-east-1"
        endpoint = self.env.get("S3_ENDPOINT_URL")
        if endpoint:
            client = make_s3_client(endpoint, region)
            bucket = self.base.s3_bucket
        else:
            try:
                from moto.server import ThreadedMotoServer
            except ImportError:
                raise click.ClickException(
                    "the embedded S3 endpoint needs moto: pip install 'moto[server]' (or set S3_ENDPOINT_URL)"
                ) from None
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            self.stack.callback(server.stop)
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            # moto accepts any credentials; explicit ones keep a real AWS profile out of it.
            client = make_s3_client(
                endpoint,
                region,
                access_key_id=secrets.token_hex(8),
                secret_access_key=secrets.token_hex(16),
            )
            bucket = EMBEDDED_BUCKET
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        self.where["s3"] = f"{endpoint} bucket {bucket}"
        return client, endpoint, bucket, region

    def _simulator(self, access_key: str, secret_key: str, webhook_secret: str) -> Any:
        from kling.simulator import Simulator

        sim = Simulator(
            access_key=access_key,
            secret_key=secret_key,
            webhook_secret=webhook_secret,
            concurrency=CONCURRENCY,
            task_seconds=TASK_SECONDS,
            callback_drop_rate=self.drop_rate,
            image_width=256,
            image_height=256,
            seed=self.seed,
        ).start()
        self.stack.callback(sim.stop)
        self.where["simulator"] = sim.base_url
        return sim

    def start(self) -> None:
        """Bring every part up; on failure, whatever started is stopped again."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from celery.beat import EmbeddedService
        from celery.contrib.testing.worker import start_worker

        from webhook import create_app
        from webhook.accounts import SERVICES_KEY as ACCOUNTS_KEY
        from webhook.api import S3_CLIENT
        from webhook.db import set_publisher
        from webhook.metrics import LIMITER_KEY
        from worker.accounts import LocalAccountGate
        from worker.factory import make_celery
        from worker.limiter import LocalSlotLimiter
        from worker.polling import LocalPollGate
        from worker.services import Services
        from worker.tasks import services_for

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._logging()
        database_url = self._database()
        s3, endpoint, bucket, region = self._s3()

        access_key = f"demo-{secrets.token_hex(8)}"
        secret_key = secrets.token_urlsafe(32)
        webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.sim = self._simulator(access_key, secret_key, webhook_secret)

        lazy = LazyApp()
        server = make_server("127.0.0.1", 0, lazy, threaded=True)
        public = f"http://127.0.0.1:{server.server_port}"

        broker = self.env.get("CELERY_BROKER_URL") or "memory://"
        self.api_token = secrets.token_urlsafe(24)
        overrides: dict[str, Any] = {
            "database_url": database_url,
            "celery_broker_url": broker,
            "kling_provider": "kling",
            "kling_api_base": self.sim.base_url,
            "kling_access_key": access_key,
            "kling_secret_key": secret_key,
            "kling_api_key": None,
            "kling_webhook_secret": webhook_secret,
            "kling_concurrency": CONCURRENCY,
            "public_base_url": public,
            "callback_secret": secrets.token_urlsafe(32),
            "api_token": self.api_token,
            "s3_bucket": bucket,
            "s3_endpoint_url": endpoint,
            "aws_region": region,
            # The simulator serves its images from 127.0.0.1, which the fetcher refuses unless listed.
            "archive_allowed_hosts": ("127.0.0.1",),
            "reconcile_after_seconds": RECONCILE_AFTER_SECONDS,
            "reconcile_interval_seconds": 0.5,
            "outbox_relay_seconds": 0.3,
            "limiter_key_prefix": f"{self.base.limiter_key_prefix}:demo-{self.stamp}",
            # A paused account is probed every second, so the queue drains soon after the top-up.
            "account_probe_seconds": PROBE_SECONDS,
        }
        self.settings = Settings(**{**self.base.model_dump(), **overrides})

        flask_app = create_app(self.settings)
        # The app presigns thumbnail and download URLs with the demo's own client: an embedded S3's
        # credentials are the demo's, never in the user's environment.
        flask_app.extensions[S3_CLIENT] = s3
        lazy.app = flask_app
        self.stack.enter_context(serve(server, "webhook"))
        self.where["dashboard"] = f"{public}/"

        app = make_celery(self.settings)
        embedded_broker = broker.startswith("memory://")
        if embedded_broker:
            # The in-memory transport polls its queues; the default 1 s would dominate a short demo.
            app.conf.broker_transport_options = {
                **app.conf.broker_transport_options,
                "polling_interval": 0.05,
            }
        else:
            # A queue of its own, so workers of a real deployment never pick up demo tasks.
            app.conf.task_default_queue = f"kling-demo-{self.stamp}"
            # Last of all: stopping the worker puts its unacked messages back on the queue.
            self.finally_.append(lambda: _delete_queue(app, app.conf.task_default_queue))
        self.where["broker"] = safe_url(broker)
        # The embedded broker has no Redis: the limiter and the gates keep their state here.
        limiter = LocalSlotLimiter(CONCURRENCY) if embedded_broker else None
        poll_gate = LocalPollGate() if embedded_broker else None
        probe_seconds = self.settings.account_probe_seconds
        account_gate = LocalAccountGate(probe_seconds=probe_seconds) if embedded_broker else None
        self.svc = Services(
            self.settings, limiter=limiter, s3=s3, poll_gate=poll_gate, account_gate=account_gate
        )
        app.kling_services = self.svc
        services_for(app)  # wires publish to this app's broker
        # The webhook publishes what a callback committed through the same app (and demo queue).
        set_publisher(flask_app, self.svc.publish)
        # The dashboard's "slots in use" reads the worker's limiter, not one built from settings.
        flask_app.extensions[LIMITER_KEY] = self.svc.limiter
        # ... and its account view (pauses, disabled) the worker's, so the banner shows a dry pack.
        flask_app.extensions[ACCOUNTS_KEY] = self.svc
        self.s3, self.bucket = s3, bucket
        self.stack.callback(self.svc.engine.dispose)
        if not embedded_broker:
            self.stack.callback(self._forget_limiter_keys)

        beat = EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
        if embedded_broker:
            # Beat stops after the worker: its ticks (every few tenths of a second) end the memory
            # transport's blocking 2 s polls, so the worker sees the shutdown at once (SIGTERM is quick).
            self.stack.callback(lambda: beat.stop() if beat.is_alive() else None)
        self.stack.enter_context(
            start_worker(
                app,
                concurrency=WORKER_THREADS,
                pool="threads",
                loglevel="INFO",
                logfile=str(self.log_path),
                perform_ping_check=False,
                shutdown_timeout=30,
            )
        )
        beat.start()
        if not embedded_broker:
            # Beat stops first: nothing lands on the demo queue once the worker has let go of it.
            self.stack.callback(beat.stop)
        self.where["log"] = str(self.log_path)

    def _forget_limiter_keys(self) -> None:
        keys = getattr(self.svc.limiter, "keys", [])
        if keys:
            import redis

            client = redis.Redis.from_url(self.settings.limiter_redis_url, socket_timeout=5)
            client.delete(*keys)
            client.close()

    def close(self) -> None:
        """Stop every part; safe to call twice (after a failed start, then on the way out)."""
        try:
            self.stack.close()
        finally:
            cleanups, self.finally_ = self.finally_, []
            for cleanup in cleanups:
                cleanup()

    # --- the batch ----------------------------------------------------------------------------------
    def submit(self, count: int) -> list[DemoJob]:
        from models.db import make_sessionmaker
        from models.outbox import OutboxEntry
        from models.statemachine import create_job
        from worker.outbox import publish_rows

        jobs: list[DemoJob] = []
        rows: list[OutboxEntry] = []
        # A session without the after-commit hook: the simulator must know which jobs lose their
        # callbacks before any submit goes out.
        with session_scope(make_sessionmaker(self.svc.engine)) as s:
            for params in plan_batch(count, self.seed):
                created = create_job(s, params, provider="kling", metadata={"demo": self.stamp})
                expect = "failed" if "[policy]" in params["prompt"] else "archived"
                jobs.append(DemoJob(created.job.id, params, expect))
                rows += created.outbox
        # Every callback of every fourth job is lost: only the reconciler's polling can finish those.
        silent = [j for j in jobs if j.expect == "archived"][1::4]
        for j in silent:
            j.callbacks_dropped = True
        self.sim.configure(task_overrides={j.id: {"callback_drop_rate": 1.0} for j in silent})
        if self.dry_pack:
            self.outage = PackOutage(dry_after(count))
            self.outage.arm(self.sim)
        assert self.svc.publish is not None
        publish_rows(self.svc.sessions, self.svc.publish, rows)
        return jobs

    def snapshot(self, ids: list[str]) -> tuple[dict[str, int], int, int, int]:
        """(jobs by status, images archived, images known, bytes archived)."""
        with session_scope(self.svc.sessions) as s:
            counts = dict(
                s.execute(select(Job.status, func.count()).where(Job.id.in_(ids)).group_by(Job.status)).all()
            )
            archived, total, nbytes = s.execute(
                select(
                    func.count().filter(Image.status == ImageStatus.ARCHIVED),
                    func.count(),
                    func.coalesce(func.sum(Image.bytes), 0),
                ).where(Image.job_id.in_(ids))
            ).one()
        return counts, int(archived), int(total), int(nbytes or 0)

    def failed_on_account(self, ids: list[str]) -> int:
        """Jobs failed with a code about the account (a dry pack must never fail a job)."""
        with session_scope(self.svc.sessions) as s:
            query = select(func.count()).where(Job.id.in_(ids), Job.error_code.in_(ACCOUNT_CODES))
            return int(s.scalar(query) or 0)

    def watch(self, jobs: list[DemoJob], timeout: float) -> bool:
        """Live progress until every job is final; False when the deadline passes first."""
        ids = [j.id for j in jobs]
        started = time.monotonic()
        deadline = started + timeout

        def frame() -> tuple[Any, bool]:
            counts, archived, total, nbytes = self.snapshot(ids)
            done = sum(counts.get(s, 0) for s in ("archived", "failed")) == len(ids)
            extra = {
                "slots": f"{self.svc.limiter.in_use()}/{self.settings.kling_concurrency}",
                "images": f"{archived}/{total}",
                "archived": f"{nbytes / 1024:.0f} KiB",
                "elapsed": f"{time.monotonic() - started:.1f}s",
            }
            if self.outage is not None:
                extra["pack"] = self.outage.state(self.sim)
            return counts_panel(counts, extra, title=f"{len(ids)} jobs"), done

        panel, done = frame()
        with Live(panel, console=self.out, refresh_per_second=8, transient=False) as live:
            while not done and time.monotonic() < deadline:
                time.sleep(REFRESH_SECONDS)  # the display's refresh interval
                panel, done = frame()
                live.update(panel)
        self.out.line()
        return done

    def verify(self, jobs: list[DemoJob]) -> list[Verdict]:
        """Check each job's final state; read every archived object back from S3 and hash it."""
        verdicts = []
        with session_scope(self.svc.sessions) as s:
            rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([d.id for d in jobs])))}
            images = {job_id: list(job.images) for job_id, job in rows.items()}
        for d in jobs:
            job = rows[d.id]
            v = Verdict(d.id, job.status, int(d.params.get("n", 1)), str(d.params.get("aspect_ratio")))
            verdicts.append(v)
            if d.expect == "failed":
                v.ok = job.status == "failed" and job.error_code == POLICY_CODE
                v.note = (
                    f"refused by provider ({job.error_code})" if v.ok else f"expected failed {POLICY_CODE}"
                )
                continue
            if job.status != JobStatus.ARCHIVED.value:
                v.note = f"expected archived: {job.error_code or ''} {job.error_message or ''}".strip()
                continue
            problems = []
            for img in images[d.id]:
                body = self.s3.get_object(Bucket=img.s3_bucket, Key=img.s3_key)["Body"].read()
                digest = hashlib.sha256(body).hexdigest()
                provider = self.sim.image_sha256(job.provider_task_id or "", img.index)
                v.keys.append(img.s3_key or "")
                v.sha256.append(digest)
                if not digest == img.sha256 == provider:
                    problems.append(f"image {img.index} sha256 mismatch")
            if len(images[d.id]) != v.n:
                problems.append(f"{len(images[d.id])} images, expected {v.n}")
            v.ok = not problems
            v.note = "; ".join(problems) or (
                "sha256 verified" + (" (callbacks lost, polled)" if d.callbacks_dropped else "")
            )
        return verdicts


def _delete_queue(app: Any, queue: str) -> None:
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # noqa: BLE001  (leftover keys are harmless; shutdown must go on)
        log.warning("could not delete the demo queue %s: %s", queue, exc)


def results_table(verdicts: list[Verdict]) -> Table:
    table = Table(title="Demo jobs", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("status")
    table.add_column("n", justify="right")
    table.add_column("ratio")
    table.add_column("S3 key", no_wrap=True)
    table.add_column("sha256 (S3 = DB = provider)", no_wrap=True)
    table.add_column("check")
    for v in verdicts:
        mark = Text("OK", style="green") if v.ok else Text("FAIL", style="bold red")
        table.add_row(
            v.job_id,
            status_text(v.status),
            str(v.n),
            v.ratio,
            "\n".join(v.keys) or "-",
            "\n".join(h[:16] for h in v.sha256) or "-",
            Text.assemble(mark, f" {v.note}"),
        )
    return table


@click.command()
@click.option(
    "--jobs", "count", default=12, show_default=True, type=click.IntRange(1, 200), help="Batch size."
)
@click.option(
    "--data-dir",
    default="var",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the SQLite file and the log go.",
)
@click.option(
    "--drop-rate",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the other callbacks the simulator loses.",
)
@click.option("--timeout", default=50.0, show_default=True, type=click.FloatRange(1), help="Seconds to wait.")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the batch and the fault dice.")
@click.option("--serve", is_flag=True, help="Keep everything running after the check, until Ctrl-C.")
@click.option(
    "--dry-pack/--no-dry-pack",
    default=True,
    show_default=True,
    help="Let the resource pack run dry mid-run and top it up seconds later.",
)
def demo(
    *, count: int, data_dir: Path, drop_rate: float, timeout: float, seed: int, serve: bool, dry_pack: bool
) -> None:
    """Run the whole service in this process on a batch of jobs, then verify every image in S3.

    Embedded by default (SQLite file, in-process Celery worker and beat on a memory broker, moto S3,
    the simulator); DATABASE_URL, CELERY_BROKER_URL and S3_ENDPOINT_URL switch to real services.
    Exits 0 only if every job ended as expected: the content-policy job failed with 1301, every
    other job archived with each object's SHA-256 matching the database and the provider. Mid-run
    the resource pack runs dry for a few seconds (--no-dry-pack skips it): jobs wait, none fails.
    """
    out = console()
    run = Demo(
        settings(),
        env=os.environ,
        data_dir=data_dir,
        out=out,
        drop_rate=drop_rate,
        seed=seed,
        dry_pack=dry_pack,
    )
    began = time.monotonic()
    # SIGTERM stops the demo as Ctrl-C does; a second signal during the shutdown is not caught.
    try:
        with stop_raises():
            run.start()
            passed = run_and_report(run, out, count=count, timeout=timeout, began=began)
            if serve:
                serving = (
                    f"Still serving: dashboard {run.where['dashboard']}#token={run.api_token} "
                    "(Ctrl-C or SIGTERM to stop)."
                )
                signum = wait_for_stop(ready=lambda: out.print(serving))
                out.print(f"{signal.Signals(signum).name}: stopping.")
    finally:
        run.close()
    if not passed:
        raise SystemExit(1)


def run_and_report(run: Demo, out: Console, *, count: int, timeout: float, began: float) -> bool:
    """Print where everything is, run the batch, verify it, print the table; True when all passed."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in run.where.items():
        grid.add_row(name, value)
    grid.add_row("API token", run.api_token)
    out.print(Group(Text("Kling orchestrator demo", style="bold"), grid))
    batch = run.submit(count)
    finished = run.watch(batch, timeout)
    verdicts = run.verify(batch)
    passed = finished and all(v.ok for v in verdicts)
    if run.outage is not None:
        out.print(run.outage.summary(run.sim, run.failed_on_account([j.id for j in batch]))[1])
    report(out, verdicts, passed=passed, finished=finished, timeout=timeout, began=began, log=run.log_path)
    return passed


def report(
    out: Console,
    verdicts: list[Verdict],
    *,
    passed: bool,
    finished: bool,
    timeout: float,
    began: float,
    log: Path,
) -> None:
    out.print(results_table(verdicts))
    good = sum(v.ok for v in verdicts)
    images = sum(len(v.keys) for v in verdicts)
    summary = (
        f"{good}/{len(verdicts)} jobs reached their expected state; {images} images read back from S3 "
        f"and verified, in {time.monotonic() - began:.1f} s."
    )
    if not finished:
        summary += f" Timed out after {timeout:g} s; see {log}."
    verdict = Text("PASS ", style="bold green") if passed else Text("FAIL ", style="bold red")
    out.print(verdict + Text(summary))
