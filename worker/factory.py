"""Build the Celery app from one Settings object (the entry point `worker/__init__.py` calls this)."""

from __future__ import annotations

import gc
import logging
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from models.logging import configure_logging
from models.settings import Settings, get_settings

# Redis redelivers an unacked task after the visibility timeout; a task must finish (or be killed)
# well before that, or a slow archive would run twice in parallel.
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 1800
TASK_SOFT_TIME_LIMIT = 1700

# Message priorities, one queue. The Redis transport keeps a list per priority step (0, 3, 6, 9) and
# a worker pops them in that order: LOWER IS SOONER (the reverse of AMQP). A freed provider slot is
# idle until its job's submit runs, so submit and release go ahead of archive work (a 1 MB archive
# is several times a submit) and the periodic safety nets go last. Nothing starves: submits only
# come as slots free up, and a worker takes the next message only when a process is free
# (`worker_prefetch_multiplier=1` with `task_acks_late`), so the order is decided at each pop.
TASK_PRIORITIES = {
    "kling.submit_job": 0,
    "kling.release_slots": 0,
    "kling.archive_job": 3,
    "kling.notify": 6,
    "kling.relay_outbox": 6,
    "kling.reconcile": 6,
    "kling.sweep": 9,
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


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("kling_orchestrator", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={name: {"priority": pri} for name, pri in TASK_PRIORITIES.items()},
        task_time_limit=TASK_TIME_LIMIT,
        task_soft_time_limit=TASK_SOFT_TIME_LIMIT,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        worker_hijack_root_logger=False,
        beat_schedule={
            "relay-outbox": {
                "task": "kling.relay_outbox",
                "schedule": timedelta(seconds=settings.outbox_relay_seconds),
            },
            "reconcile": {
                "task": "kling.reconcile",
                "schedule": timedelta(seconds=settings.reconcile_interval_seconds),
            },
            "sweep": {
                "task": "kling.sweep",
                "schedule": timedelta(seconds=settings.sweep_interval_seconds),
            },
        },
    )
    app.conf.kling_settings = settings

    def json_logs(**_: Any) -> None:
        # Structured JSON lines with job ids, secrets scrubbed, like the webhook's; a host process
        # that set up logging itself (the demo, tests) keeps its own.
        if not logging.getLogger().handlers:
            configure_logging(settings)

    # Connected per app (strong ref) so `celery -A worker worker/beat` logs JSON, not Celery's text.
    setup_logging.connect(json_logs, weak=False)
    worker_process_init.connect(freeze_loaded_objects, weak=False)
    # Registers the tasks on this app (they are bound via `app.task` in the module).
    from worker import tasks

    tasks.register(app)
    return app
