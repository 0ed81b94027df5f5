"""How a worker orders and carries its work: message priorities, publishing after commit, GC freezing."""

from __future__ import annotations

import gc
import uuid
import weakref
from typing import Any

import pytest
from celery.signals import worker_process_init
from sqlalchemy import Engine, select

from models.db import session_scope
from models.settings import Settings
from models.statemachine import create_job
from models.tables import Job
from tests.fixtures.db import empty_tables
from worker.factory import VISIBILITY_TIMEOUT, make_celery
from worker.outbox import celery_publisher
from worker.services import Services
from worker.tasks import OUTBOX_PRIORITIES, TASK_NAMES, TASK_PRIORITIES


def _settings(broker: str, database_url: str = "sqlite://") -> Settings:
    return Settings(celery_broker_url=broker, redis_url=broker, database_url=database_url, s3_bucket="b")


def test_every_task_has_a_priority() -> None:
    app = make_celery(_settings("memory://"))
    kling_tasks = {name for name in app.tasks if name.startswith("kling.")}
    assert kling_tasks == set(TASK_PRIORITIES)
    assert set(TASK_NAMES.values()) <= set(TASK_PRIORITIES)
    # Redis pops priority 0 first: the slot hand-off (release, dispatched submit) goes ahead of
    # archiving; a new job's first submit after it.
    assert OUTBOX_PRIORITIES["dispatch_job"] < TASK_PRIORITIES["kling.archive_job"]
    assert OUTBOX_PRIORITIES["submit_job"] > TASK_PRIORITIES["kling.archive_job"]
    assert TASK_PRIORITIES["kling.release_slots"] < TASK_PRIORITIES["kling.archive_job"]
    # Downstream deliveries go last: archives never queue behind them.
    assert TASK_PRIORITIES["kling.notify"] == max(TASK_PRIORITIES.values())
    assert app.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT


@pytest.mark.integration
def test_the_worker_takes_dispatched_submits_before_archives_queued_earlier(redis_url: str) -> None:
    """What a worker's next pop returns with a backlog: dispatched submits and releases, archives,
    then new jobs' first submits with the periodic work."""
    app = make_celery(_settings(redis_url))
    queue = f"test-priority-{uuid.uuid4().hex}"
    app.conf.task_default_queue = queue
    publish = celery_publisher(app)
    sent = [
        ("notify", "n1"),
        ("archive_job", "a1"),
        ("reconcile", None),
        ("archive_job", "a2"),
        ("submit_job", "new"),
        ("release_slots", "r1"),
        ("dispatch_job", "d1"),
    ]
    for name, arg in sent:
        if arg is None:
            app.send_task("kling.reconcile")  # periodic tasks come from beat, not the outbox
        else:
            publish(name, [arg])
    got: list[tuple[str, Any]] = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            for _ in sent:
                message = simple.get(timeout=5)
                message.ack()
                args = message.headers.get("argsrepr")
                got.append((message.headers["task"], args))
        finally:
            simple.queue.delete()
            simple.close()
    assert got == [
        ("kling.release_slots", "['r1']"),
        ("kling.submit_job", "['d1']"),
        ("kling.archive_job", "['a1']"),
        ("kling.archive_job", "['a2']"),
        ("kling.reconcile", "()"),
        ("kling.submit_job", "['new']"),
        ("kling.notify", "['n1']"),
    ]
    # Within one priority the order stays first in, first out (the archives above).


def test_a_session_publishes_exactly_the_rows_it_committed(sqlite_url: str, sqlite_engine: Engine) -> None:
    """The after-commit hook: rows the writers return go out once their transaction commits, and
    only then; a transaction without rows publishes nothing, a rolled-back one nothing either."""
    from kling.types import Task, TaskStatus
    from models.statemachine import apply_provider_task, transition
    from models.tables import Outbox

    sent: list[tuple[str, list[Any]]] = []
    svc = Services(
        _settings("memory://", sqlite_url), engine=sqlite_engine, publish=lambda n, a: sent.append((n, a))
    )
    try:
        with session_scope(svc.sessions) as s:
            s.execute(select(Job.id).limit(1))
        assert sent == []
        with pytest.raises(RuntimeError), session_scope(svc.sessions) as s:
            create_job(s, {"prompt": "p", "n": 1}, provider="kling")
            raise RuntimeError("rolled back")
        assert sent == []
        with session_scope(svc.sessions) as s:
            job = create_job(s, {"prompt": "p", "n": 1}, provider="kling").job
            transition(s, job, "submitted", source="worker", provider_task_id="task-poll")
            job_id = job.id
        assert sent == [("submit_job", [job_id])]
        # A poll that ends the provider task writes its release row with Core statements.
        with session_scope(svc.sessions) as s:
            task = Task(task_id="task-poll", status=TaskStatus.FAILED, status_message="x")
            result = apply_provider_task(s, job_id, task, source="poll")
            assert [row.task for row in result.outbox] == ["release_slots"]
        assert sent[1:] == [("release_slots", [job_id])]
        with session_scope(svc.sessions) as s:
            marked = s.scalars(select(Outbox.dispatched_at).where(Outbox.args.is_not(None))).all()
        assert len(marked) == 2 and all(marked)  # published and marked: the relay has nothing left
    finally:
        empty_tables(sqlite_engine)


def test_pool_processes_prepare_their_clients_then_freeze_the_loaded_app() -> None:
    # A port nobody listens on: preparing builds clients, it connects nothing.
    settings = _settings("memory://").model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    app = make_celery(settings)
    receivers = [
        ref() if isinstance(ref, weakref.ReferenceType) else ref for _, ref in worker_process_init.receivers
    ]
    gc.unfreeze()
    try:
        for receiver in receivers:
            if receiver is not None and getattr(receiver, "__qualname__", "").startswith("make_celery."):
                receiver()
        svc = app.kling_services
        # Built before the first task (cached properties land in the instance's __dict__).
        assert {"engine", "sessions", "s3", "fetcher", "limiter"} <= set(vars(svc))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
