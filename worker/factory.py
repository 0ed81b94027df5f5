"""Build the Celery app from one Settings object: `worker/celery.py` (for `celery -A worker`), the
CLI, the demo and the tests call `make_celery`; nothing builds an app at import."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from models.logging import configure_logging
from models.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Redis redelivers an unacked task after the visibility timeout; a task must finish (or be killed)
# well before that, or a slow archive would run twice in parallel.
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 1800
TASK_SOFT_TIME_LIMIT = 1700
# An app that only publishes from inside web requests (the webhook) must not wait on a stalled
# broker, one that accepts connections and never answers: every connect and reply is bounded and a
# failed connect is not retried here (the outbox relay is the retry). Workers keep kombu's
# defaults: their BRPOP and publishes may wait out a stall, and resume when the broker does.
REQUEST_BROKER_TIMEOUT_SECONDS = 2.0
REQUEST_BROKER_OPTIONS = {
    "socket_timeout": REQUEST_BROKER_TIMEOUT_SECONDS,
    "socket_connect_timeout": REQUEST_BROKER_TIMEOUT_SECONDS,
    "max_retries": 0,  # connection attempts when a channel is (re)opened: one
}


def freeze_loaded_objects(**_: Any) -> None:
    """In each pool process, right after the fork: move everything loaded so far out of the GC's reach.

    The imported app (SQLAlchemy, botocore, Celery, ...) is hundreds of thousands of long-lived
    objects; every full collection walks them all again (about 90 ms here), stalling whatever task
    the process runs, a slot hand-off included. Frozen objects are never collected (they live as
    long as the process anyway) and are not written to by the collector, which also keeps the
    pages shared with the parent.
    """
    gc.freeze()


def warm_services(app: Celery) -> None:
    """Build a pool process's clients before its first task: the engine, S3 client and limiter
    cost ~250 ms together, which the first archive after a callback would otherwise wait for.
    Nothing here connects; a misconfigured part fails its first task, as it would anyway."""
    from worker.tasks import services_for

    svc = services_for(app)
    for part in ("sessions", "s3", "fetcher", "limiter"):
        try:
            getattr(svc, part)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not prepare %s at process start: %s", part, type(exc).__name__)


def make_celery(settings: Settings | None = None, *, for_requests: bool = False) -> Celery:
    """The app; `for_requests`: the webhook's publisher, with REQUEST_BROKER_OPTIONS."""
    # Here, not at the top: worker.tasks imports this module's constants.
    from worker import alerts, archiving, notify, polling, repair, slots, submit, tasks

    settings = settings or get_settings()
    app = Celery("kling_orchestrator", set_as_current=False)
    transport_options: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT}
    if for_requests:
        transport_options.update(REQUEST_BROKER_OPTIONS)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={name: {"priority": pri} for name, pri in tasks.TASK_PRIORITIES.items()},
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        worker_hijack_root_logger=False,
    )
    app.conf.kling_settings = settings

    def json_logs(**_: Any) -> None:
        # Structured JSON lines with job ids, secrets scrubbed, like the webhook's; a host process
        # that set up logging itself (the demo, tests) keeps its own.
        if not logging.getLogger().handlers:
            configure_logging(settings)

    # Connected per app (strong ref) so `celery -A worker worker/beat` logs JSON, not Celery's text.
    setup_logging.connect(json_logs, weak=False)

    def prepare_pool_process(**_: Any) -> None:
        warm_services(app)
        freeze_loaded_objects()

    worker_process_init.connect(prepare_pool_process, weak=False)
    # Each workflow defines its tasks on this app and names its periodic work.
    schedule: dict[str, dict[str, Any]] = {}
    for workflow in (tasks, submit, slots, polling, archiving, notify, alerts, repair):
        schedule.update(workflow.register(app))
    app.conf.beat_schedule = schedule
    return app
