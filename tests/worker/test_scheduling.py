"""How a worker orders and carries its work: message priorities, the outbox flag, GC freezing."""

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
from worker.factory import VISIBILITY_TIMEOUT, freeze_loaded_objects, make_celery
from worker.services import Services
from worker.tasks import TASK_NAMES, TASK_PRIORITIES


def _settings(broker: str, database_url: str = "sqlite://") -> Settings:
    return Settings(celery_broker_url=broker, redis_url=broker, database_url=database_url, s3_bucket="b")


def test_every_task_has_a_priority() -> None:
    app = make_celery(_settings("memory://"))
    kling_tasks = {name for name in app.tasks if name.startswith("kling.")}
    assert kling_tasks == set(TASK_PRIORITIES)
    assert set(TASK_NAMES.values()) <= set(TASK_PRIORITIES)
    # Redis pops priority 0 first: the slot hand-off (release, submit) goes ahead of archiving.
    assert TASK_PRIORITIES["kling.submit_job"] < TASK_PRIORITIES["kling.archive_job"]
    assert TASK_PRIORITIES["kling.release_slots"] < TASK_PRIORITIES["kling.archive_job"]
    assert app.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT


@pytest.mark.integration
def test_the_worker_takes_submits_before_archives_queued_earlier(redis_url: str) -> None:
    """What a worker's next pop returns with a backlog: the submits and releases, then archives."""
    app = make_celery(_settings(redis_url))
    queue = f"test-priority-{uuid.uuid4().hex}"
    app.conf.task_default_queue = queue
    sent = [
        ("kling.archive_job", "a1"),
        ("kling.reconcile", None),
        ("kling.archive_job", "a2"),
        ("kling.submit_job", "s1"),
        ("kling.release_slots", "r1"),
        ("kling.submit_job", "s2"),
    ]
    for name, arg in sent:
        app.send_task(name, args=[arg] if arg else [])
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
    names = [name for name, _ in got]
    assert names == [
        "kling.submit_job",
        "kling.release_slots",
        "kling.submit_job",
        "kling.archive_job",
        "kling.archive_job",
        "kling.reconcile",
    ]
    # Within one priority the order stays first in, first out.
    assert [args for name, args in got if name == "kling.submit_job"] == ["['s1']", "['s2']"]
    assert [args for name, args in got if name == "kling.archive_job"] == ["['a1']", "['a2']"]


def test_services_notes_outbox_rows_for_the_relay_after_a_task(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    svc = Services(_settings("memory://", sqlite_url))
    svc.__dict__["engine"] = sqlite_engine
    with session_scope(svc.sessions) as s:
        s.execute(select(Job.id).limit(1))  # a transaction without outbox rows
    assert svc.take_outbox_written() is False
    s = svc.sessions()
    try:
        create_job(s, {"prompt": "p", "n": 1}, provider="kling")  # adds a submit_job outbox row
        s.flush()
        assert svc.take_outbox_written() is True
        assert svc.take_outbox_written() is False  # taken: the next task relays only if it writes
    finally:
        s.rollback()
        s.close()


def test_services_notes_rows_the_state_machine_writes_with_core_statements(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    """A poll that ends a provider task writes release (and archive) rows without ORM objects."""
    from kling.types import Task, TaskStatus
    from models.statemachine import apply_provider_task, transition

    svc = Services(_settings("memory://", sqlite_url))
    svc.__dict__["engine"] = sqlite_engine
    s = svc.sessions()
    try:
        job = create_job(s, {"prompt": "p", "n": 1}, provider="kling")
        transition(s, job, "submitted", source="worker", provider_task_id="task-poll")
        s.flush()
        svc.take_outbox_written()
        task = Task(task_id="task-poll", status=TaskStatus.FAILED, status_message="x")
        result = apply_provider_task(s, job.id, task, source="poll")
        assert [row.task for row in result.outbox] == ["release_slots"]
        s.commit()
        assert svc.take_outbox_written() is True
    finally:
        s.rollback()
        s.close()
        empty_tables(sqlite_engine)


def test_pool_processes_freeze_the_loaded_app() -> None:
    make_celery(_settings("memory://"))
    receivers = [
        ref() if isinstance(ref, weakref.ReferenceType) else ref for _, ref in worker_process_init.receivers
    ]
    assert freeze_loaded_objects in receivers
    gc.unfreeze()
    try:
        freeze_loaded_objects()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
