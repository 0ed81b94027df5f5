"""The demo's stack: every part of the service started in this process over real wires, and stopped
again (also on Ctrl-C). `klingctl demo` (klingctl/demo.py) runs a batch on it.

The simulator answers HTTP, its callbacks reach the real webhook over HTTP, the Celery worker and
beat run in threads of this process, boto3 talks HTTP to an S3 endpoint. With DATABASE_URL /
CELERY_BROKER_URL / S3_ENDPOINT_URL set, those services are used instead of the embedded SQLite
file, memory broker and moto server.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
from werkzeug.serving import BaseWSGIServer, make_server

from klingctl.common import safe_url
from klingctl.demo_pack import PROBE_SECONDS
from models.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_BUCKET = "kling-demo"
# Short provider tasks, and a reconciler that steps in after one quiet second, keep the demo brief.
TASK_SECONDS = 1.0
RECONCILE_AFTER_SECONDS = 1.0
CONCURRENCY = 8
WORKER_THREADS = 4


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


class DemoStack:
    """Starts every part and stops every part (also on Ctrl-C); `where` says where each one is."""

    def __init__(
        self,
        base: Settings,
        *,
        env: Mapping[str, str],
        data_dir: Path,
        drop_rate: float,
        seed: int,
    ) -> None:
        self.base = base
        self.env = env
        self.data_dir = data_dir
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
        from worker.limiter_local import LocalSlotLimiter
        from worker.poll_gate import LocalPollGate
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
        self.public_url = public  # the webhook: API, callbacks, dashboard
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
        # The poller's loop, started by beat in its thread (worker/poll_loop.py), stops first of all.
        self.stack.callback(lambda: app.kling_poller.stop() if hasattr(app, "kling_poller") else None)
        self.where["log"] = str(self.log_path)

    def _forget_limiter_keys(self) -> None:
        keys = getattr(self.svc.limiter, "keys", [])
        if keys:
            import redis

            client = redis.Redis.from_url(self.settings.limiter_redis_url, socket_timeout=5)
            client.delete(*keys)
            # The pumps' dispatch marks (worker/dispatch_marks.py) lapse in seconds; none outlives the demo.
            from worker.dispatch_marks import marks_prefix

            marks = list(client.scan_iter(match=f"{marks_prefix(self.settings.limiter_key_prefix)}:*"))
            if marks:
                client.delete(*marks)
            client.close()

    def close(self) -> None:
        """Stop every part; safe to call twice (after a failed start, then on the way out)."""
        try:
            self.stack.close()
        finally:
            cleanups, self.finally_ = self.finally_, []
            for cleanup in cleanups:
                cleanup()


def _delete_queue(app: Any, queue: str) -> None:
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # noqa: BLE001  (leftover keys are harmless; shutdown must go on)
        log.warning("could not delete the demo queue %s: %s", queue, exc)
