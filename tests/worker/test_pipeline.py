"""The worker's plain functions on real parts: PostgreSQL, Redis limiter, moto S3 over HTTP and the
simulator over HTTP. Celery is left out: these call the workflows' plain functions directly (worker.submit,
slots, archiving, repair) and record publishes."""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from pytest_httpserver import HTTPServer
from sqlalchemy import select, update
from werkzeug import Response

from kling import Task, TaskImage, TaskStatus
from models import statemachine
from models.db import make_sessionmaker, session_scope
from models.enums import JobStatus
from models.settings import Settings
from models.statemachine import apply_provider_task, create_job, transition
from models.tables import Image, Job, Outbox
from tests.fixtures.services import assert_no_connection
from tests.worker.harness import Harness
from worker import archiving, repair, slots, submit
from worker.archiver import archive_image, object_stem
from worker.claims import db_now, take_claim
from worker.factory import make_celery
from worker.outbox import QUICK_RETRY, celery_publisher, relay
from worker.outcome import Step
from worker.services import Services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# --- submit -----------------------------------------------------------------------------------------
def test_submit_records_the_provider_task_and_holds_slots(harness: Harness) -> None:
    job_id = harness.job({"prompt": "p", "n": 3})
    outcome = submit.submit_job(harness.svc, job_id)
    assert outcome.step is Step.DONE
    job = harness.get(job_id)
    assert job.status == "submitted"
    assert [t["task_id"] for t in harness.sim.tasks_by_external_id(job_id)] == [job.provider_task_id]
    assert harness.svc.limiter.holders() == {job_id: 3}
    # A redelivered message does nothing: still one provider task.
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    assert len(harness.sim.tasks_by_external_id(job_id)) == 1


def test_no_slots_means_wait_and_the_job_stays_queued(harness: Harness) -> None:
    harness.svc.limiter.limit = 2
    job_id = harness.job({"prompt": "p", "n": 2})
    other = harness.job({"prompt": "q", "n": 1})
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    assert submit.submit_job(harness.svc, other).step is Step.WAIT
    waiting = harness.get(other)
    assert waiting.status == "queued"
    # The claim of a run that found no slots is not kept, and no create was counted.
    assert (waiting.claim_token, waiting.claimed_until, waiting.create_attempts) == (None, None, 0)
    assert harness.get(job_id).create_attempts == 1
    assert harness.sim.tasks_by_external_id(other) == []
    # When the first one's slots come back, the pump dispatches the waiting job.
    assert slots.release_slots(harness.svc, job_id) == [other]
    assert ("dispatch_job", [other]) in harness.published
    # The second release of the same task (webhook, then the release_slots task) frees nothing and
    # does not dispatch the waiting job again while its first message is still queued.
    harness.published.clear()
    assert slots.release_slots(harness.svc, job_id) == []
    assert harness.published == []

    # The release_slots task runs only when the webhook's release and pump did not both go
    # through (e.g. the pump failed on a broker outage after the lease was freed): it pumps anyway.
    def broker_down(name: str, args: list[Any]) -> None:
        raise ConnectionError("broker down")

    publish, harness.svc.publish = harness.svc.publish, broker_down
    harness.svc.dispatch_marks.clear(other)
    with pytest.raises(ConnectionError):
        slots.pump(harness.svc)
    harness.svc.publish = publish
    assert slots.release_slots(harness.svc, job_id, durable=True) == [other]
    assert harness.published == [("dispatch_job", [other])]


def test_a_second_pump_does_not_send_a_job_whose_message_is_on_its_way(harness: Harness) -> None:
    harness.svc.limiter.limit = 1
    running, waiting = harness.job(), harness.job()
    assert submit.submit_job(harness.svc, running).step is Step.DONE
    assert slots.release_slots(harness.svc, running) == [waiting]
    # Its submit has not run yet: still queued, unclaimed, and its slot still free.
    assert slots.pump(harness.svc) == []
    assert harness.published.count(("dispatch_job", [waiting])) == 1
    # Its run finds no slot (another job took it meanwhile): the next pump may send it at once.
    assert harness.svc.limiter.acquire("someone-else", 1)
    assert submit.submit_job(harness.svc, waiting).step is Step.WAIT
    harness.svc.limiter.release("someone-else")
    assert slots.pump(harness.svc) == [waiting]
    assert harness.published.count(("dispatch_job", [waiting])) == 2


def test_a_job_created_deep_in_the_queue_is_dispatched_by_the_pump(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statemachine, "QUEUE_DEPTH_FOR_PUMP", 1)
    harness.svc.limiter.limit = 1
    running = harness.job()
    assert submit.submit_job(harness.svc, running).step is Step.DONE
    waiting = harness.job()
    assert submit.submit_job(harness.svc, waiting).step is Step.WAIT
    with session_scope(harness.svc.sessions) as s:  # one queued job ahead of it: no first submit
        behind = create_job(s, {"prompt": "p", "n": 1}, provider="kling", defer_when_deep=True).job.id
    with session_scope(harness.svc.sessions) as s:
        submits = s.scalars(select(Outbox.args).where(Outbox.task == "submit_job")).all()
    assert sorted(submits) == sorted([[running], [waiting]])
    assert slots.release_slots(harness.svc, running) == [waiting]
    assert submit.submit_job(harness.svc, waiting).step is Step.DONE
    # The next slot freed goes to it, in queue order, though no run of it ever asked.
    assert slots.release_slots(harness.svc, waiting) == [behind]
    assert ("dispatch_job", [behind]) in harness.published
    assert submit.submit_job(harness.svc, behind).step is Step.DONE
    assert harness.get(behind).status == "submitted"


def test_a_release_reads_only_the_head_of_a_long_wait_queue(harness: Harness) -> None:
    # Each release pumps; reading the whole queue there made draining a 20,000-job backlog quadratic.
    harness.svc.limiter.limit = 1
    holder = harness.job({"prompt": "p", "n": 1})
    assert submit.submit_job(harness.svc, holder).step is Step.DONE
    backlog = [harness.job({"prompt": f"w{i}", "n": 1}) for i in range(150)]
    for job_id in reversed(backlog):  # the limiter's order differs from creation order
        assert submit.submit_job(harness.svc, job_id).step is Step.WAIT
    asked: list[int | None] = []
    real_order = harness.svc.limiter.serving_order
    harness.svc.limiter.serving_order = lambda first: asked.append(first) or real_order(first)  # type: ignore[method-assign]
    assert slots.release_slots(harness.svc, holder) == [backlog[-1]]  # the head of the limiter's queue
    assert asked == [100]


def test_provider_1303_releases_slots_and_requeues(harness: Harness) -> None:
    # The blocker runs until the test is done: a loaded machine must not let it finish first.
    harness.sim.configure(concurrency=1, processing_seconds=60)
    blocker = harness.svc.provider.create_image(__import__("kling").ImageRequest(prompt="x", n=1))
    job_id = harness.job({"prompt": "p", "n": 1})
    outcome = submit.submit_job(harness.svc, job_id)
    assert outcome.step is Step.RETRY and outcome.retry_in >= 0 and outcome.claim
    assert harness.get(job_id).status == "queued"
    assert job_id not in harness.svc.limiter.holders()
    assert harness.sim.count_by_code.get(1303) == 1
    assert blocker.task_id


def test_a_create_whose_fate_is_unknown_is_looked_up_before_creating_again(harness: Harness) -> None:
    job_id = harness.job()
    # A run sent the create and died before recording it (the worker was killed).
    task = harness.svc.provider.create_image(
        __import__("kling").ImageRequest(prompt="a lighthouse", n=1), external_task_id=job_id
    )
    with session_scope(harness.svc.sessions) as s:
        s.get(Job, job_id).create_attempts = 1
    creates_before = harness.sim.create_count
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    assert harness.sim.create_count == creates_before
    assert harness.get(job_id).provider_task_id == task.task_id


def test_a_job_needing_more_slots_than_the_account_has_fails_clearly(harness: Harness) -> None:
    harness.svc.limiter.limit = 2
    job_id = harness.job({"prompt": "p", "n": 3})
    assert submit.submit_job(harness.svc, job_id).step is Step.FAILED
    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("failed", "exceeds_concurrency")
    assert harness.sim.tasks_by_external_id(job_id) == []


def test_content_policy_fails_the_job_with_the_provider_code(harness: Harness) -> None:
    job_id = harness.job({"prompt": "something [policy]", "n": 1})
    assert submit.submit_job(harness.svc, job_id).step is Step.FAILED
    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("failed", "1301")
    assert harness.svc.limiter.holders() == {}


def test_accepted_then_dropped_create_is_found_not_repeated(harness: Harness) -> None:
    harness.sim.configure(accept_then_drop_rate=1.0)
    job_id = harness.job()
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    assert harness.sim.dropped_connections == 1
    job = harness.get(job_id)
    assert job.status == "submitted"
    assert [t["task_id"] for t in harness.sim.tasks_by_external_id(job_id)] == [job.provider_task_id]


def test_5xx_before_processing_retries_without_a_task(harness: Harness) -> None:
    harness.sim.configure(fault_5000_rate=1.0, faults_on_create_only=True)
    job_id = harness.job()
    outcome = submit.submit_job(harness.svc, job_id)
    assert outcome.step is Step.RETRY
    assert harness.sim.tasks_by_external_id(job_id) == []
    harness.sim.configure(fault_5000_rate=0.0)
    # The retry holds the claim: a stray duplicate message does nothing meanwhile.
    assert submit.submit_job(harness.svc, job_id).detail == "another run owns this job"
    assert submit.submit_job(harness.svc, job_id, claim=outcome.claim).step is Step.DONE
    assert len(harness.sim.tasks_by_external_id(job_id)) == 1


# --- archive ----------------------------------------------------------------------------------------
def test_archive_copies_every_image_and_marks_the_job_archived(harness: Harness) -> None:
    job = harness.submit_and_finish({"prompt": "p", "n": 2})
    assert job.status == "succeeded"
    assert archiving.archive_job(harness.svc, job.id).step is Step.DONE
    job = harness.get(job.id)
    assert job.status == "archived"
    for img in job.images:
        expected = harness.sim.image_sha256(job.provider_task_id, img.index)
        assert (img.status, img.sha256) == ("archived", expected)
        obj = harness.svc.s3.get_object(Bucket=img.s3_bucket, Key=img.s3_key)
        assert hashlib.sha256(obj["Body"].read()).hexdigest() == expected
        assert obj["Metadata"]["job-id"] == job.id
    # Running it again changes nothing.
    assert archiving.archive_job(harness.svc, job.id).step is Step.DONE


def test_rerun_after_a_crash_reuses_the_stored_object_even_if_the_source_is_gone(harness: Harness) -> None:
    job = harness.submit_and_finish({"prompt": "p", "n": 1})
    (img,) = job.images
    settings = harness.svc.settings
    # A first run marked its attempt, uploaded, and died before writing the result.
    with session_scope(harness.svc.sessions) as s:
        s.execute(update(Image).where(Image.id == img.id).values(s3_bucket=settings.s3_bucket))
    archive_image(
        harness.svc.s3,
        bucket=settings.s3_bucket,
        key_stem=object_stem(settings.s3_prefix, job.id, 0),
        url=img.source_url,
        fetcher=harness.svc.fetcher,
        metadata={"job-id": job.id},
    )
    expected = harness.sim.image_sha256(job.provider_task_id, 0)
    harness.sim.expire(job.provider_task_id)
    assert archiving.archive_job(harness.svc, job.id).step is Step.DONE
    job = harness.get(job.id)
    assert job.status == "archived"
    assert job.images[0].sha256 == expected


def test_archive_is_not_blocked_by_a_submit_run_that_a_callback_overtook(harness: Harness) -> None:
    job_id = harness.job()
    with session_scope(harness.svc.sessions) as s:
        # A submit run holds the job: it sent the create and has not recorded the answer yet.
        assert take_claim(s, job_id, JobStatus.QUEUED, None, 60)
    request = __import__("kling").ImageRequest(prompt="a lighthouse", n=1)
    task = harness.svc.provider.create_image(request, external_task_id=job_id)
    harness.wait_sim_final(task.task_id)
    with session_scope(harness.svc.sessions) as s:
        # The `succeed` callback arrives first and moves the job on: a new step, free to claim.
        apply_provider_task(s, job_id, harness.svc.provider.get_image(task.task_id), source="callback")
    assert archiving.archive_job(harness.svc, job_id).step is Step.DONE
    assert harness.get(job_id).status == "archived"


def test_image_expired_before_archive_fails_the_job(harness: Harness) -> None:
    job = harness.submit_and_finish()
    harness.sim.expire(job.provider_task_id)
    assert archiving.archive_job(harness.svc, job.id).step is Step.FAILED
    job = harness.get(job.id)
    assert (job.status, job.error_code) == ("failed", "source_expired")
    assert [img.status for img in job.images] == ["expired"]


def test_one_lost_image_does_not_stop_the_others(harness: Harness) -> None:
    job = harness.submit_and_finish({"prompt": "p", "n": 1})
    with session_scope(harness.svc.sessions) as s:
        s.add(Image(job_id=job.id, index=1, source_url=f"{harness.sim.base_url}/images/no-such-task/1.png"))
    assert archiving.archive_job(harness.svc, job.id).step is Step.FAILED
    job = harness.get(job.id)
    assert (job.status, job.error_code) == ("failed", "source_expired")
    assert [(img.index, img.status) for img in job.images] == [(0, "archived"), (1, "expired")]
    assert job.images[0].sha256 == harness.sim.image_sha256(job.provider_task_id, 0)


def test_success_reported_without_images_is_completed_from_the_provider(harness: Harness) -> None:
    job_id = harness.job({"prompt": "p", "n": 2})
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    task_id = harness.get(job_id).provider_task_id or ""
    harness.wait_sim_final(task_id)
    with session_scope(harness.svc.sessions) as s:
        bare = Task(task_id=task_id, status=TaskStatus.SUCCEEDED)
        apply_provider_task(s, job_id, bare, source="callback")
    assert harness.get(job_id).images == []
    assert archiving.archive_job(harness.svc, job_id).step is Step.DONE
    job = harness.get(job_id)
    assert job.status == "archived"
    assert [img.status for img in job.images] == ["archived", "archived"]


@pytest.mark.parametrize("host", ["169.254.169.254", "evil.example.com"])
def test_disallowed_source_is_never_fetched(harness: Harness, silent_listener, host: str) -> None:
    port = silent_listener.getsockname()[1]
    job_id = harness.job()
    with session_scope(harness.svc.sessions) as s:
        transition(s, s.get(Job, job_id), "submitted", source="worker", provider_task_id="t-" + job_id)
        task = Task(
            task_id="t-" + job_id,
            status=TaskStatus.SUCCEEDED,
            images=(TaskImage(index=0, url=f"http://{host}:{port}/latest/meta-data"),),
        )
        apply_provider_task(s, job_id, task, source="poll")
    assert archiving.archive_job(harness.svc, job_id).step is Step.FAILED
    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("failed", "archive_refused")
    assert [img.status for img in job.images] == ["failed"]
    assert_no_connection(silent_listener)


class SlowSource:
    """An image CDN that drips one image in small chunks until told to finish: a fetch slower than
    any claim period the test picks. Records what it sent."""

    def __init__(self, server: HTTPServer) -> None:
        self.finish = threading.Event()
        self.sent = hashlib.sha256()
        self.bytes = 0
        server.expect_request("/slow.png").respond_with_handler(self._respond)
        self.url = server.url_for("/slow.png")

    def _respond(self, request: Any) -> Response:
        return Response(self._body(), content_type="image/png")

    def _body(self) -> Iterator[bytes]:
        rng = random.Random(5)
        chunk = b"\x89PNG\r\n\x1a\n" + rng.randbytes(4088)
        deadline = time.monotonic() + 60  # never drip forever if a test dies
        while True:
            self.sent.update(chunk)
            self.bytes += len(chunk)
            yield chunk
            if self.finish.wait(0.05) or time.monotonic() > deadline:  # the drip rate, not a sync
                return
            chunk = rng.randbytes(4096)


def slow_archive_job(harness: Harness, source: SlowSource) -> str:
    job_id = harness.job()
    with session_scope(harness.svc.sessions) as s:
        transition(s, s.get(Job, job_id), "submitted", source="worker", provider_task_id="t-" + job_id)
        task = Task(
            task_id="t-" + job_id, status=TaskStatus.SUCCEEDED, images=(TaskImage(index=0, url=source.url),)
        )
        apply_provider_task(s, job_id, task, source="poll")
    return job_id


def db_clock(svc: Services) -> datetime:
    with session_scope(svc.sessions) as s:
        now = s.scalar(select(db_now()))
    assert now is not None
    return now


def slow_archive(
    harness: Harness, source_server: HTTPServer, *, claim_seconds: float
) -> tuple[Services, SlowSource, str]:
    """Services with a short archive claim, a source that drips, and a job archiving from it."""
    svc = Services(
        harness.svc.settings.model_copy(update={"stuck_archive_seconds": claim_seconds}),
        sessions=harness.svc.sessions,
        s3=harness.svc.s3,
        limiter=harness.svc.limiter,
    )
    source = SlowSource(source_server)
    return svc, source, slow_archive_job(harness, source)


def test_a_fetch_slower_than_the_claim_keeps_the_claim_and_a_second_run_does_nothing(
    harness: Harness, source_server: HTTPServer
) -> None:
    svc, source, job_id = slow_archive(harness, source_server, claim_seconds=3.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(archiving.archive_job, svc, job_id)
        deadline = time.monotonic() + 30
        while harness.get(job_id).claimed_until is None:
            assert time.monotonic() < deadline, "the archive run never claimed the job"
            time.sleep(0.02)
        taken_until = harness.get(job_id).claimed_until
        assert taken_until is not None
        # Past the claim the run took (by the database's clock), the fetch still going on...
        while db_clock(svc) <= taken_until:
            assert time.monotonic() < deadline, "the database clock never passed the first claim"
            time.sleep(0.1)
        assert not first.done() and not source.finish.is_set()
        # ...the claim is still held: the copy renewed it as chunks came in.
        renewed = harness.get(job_id).claimed_until
        assert renewed is not None and renewed > taken_until and renewed > db_clock(svc)
        # A second run (a re-dispatch, a redelivered message) starts nothing.
        second = archiving.archive_job(svc, job_id)
        assert (second.step, second.detail) == (Step.DONE, "another run owns this job")
        assert len(source_server.log) == 1
        source.finish.set()
        assert first.result(timeout=30).step is Step.DONE
    job = harness.get(job_id)
    assert job.status == "archived"
    (img,) = job.images
    assert (img.sha256, img.bytes) == (source.sent.hexdigest(), source.bytes)
    stored = harness.svc.s3.get_object(Bucket=img.s3_bucket, Key=img.s3_key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == source.sent.hexdigest()


def test_a_run_whose_claim_was_taken_stops_without_writing(
    harness: Harness, source_server: HTTPServer
) -> None:
    svc, source, job_id = slow_archive(harness, source_server, claim_seconds=1.5)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(archiving.archive_job, svc, job_id)
            deadline = time.monotonic() + 30
            while harness.get(job_id).claimed_until is None:
                assert time.monotonic() < deadline, "the archive run never claimed the job"
                time.sleep(0.02)
            # Another run owns the job now (say the first one stalled past its claim).
            with session_scope(svc.sessions) as s:
                s.execute(update(Job).where(Job.id == job_id).values(claim_token="another-run"))
            outcome = first.result(timeout=30)  # its next heartbeat finds out, mid-fetch
            assert not source.finish.is_set()
    finally:
        source.finish.set()
    assert (outcome.step, outcome.detail) == (Step.DONE, "claim lost to another run")
    job = harness.get(job_id)
    assert (job.status, job.claim_token) == ("succeeded", "another-run")
    assert [img.status for img in job.images] == ["pending"]
    assert harness.svc.s3.list_objects_v2(Bucket=harness.svc.settings.s3_bucket).get("KeyCount", 0) == 0


def test_hundred_megabyte_image_archives_intact(harness: Harness) -> None:
    size = 100 * 1024 * 1024
    harness.sim.configure(image_bytes=size)
    job = harness.submit_and_finish()
    assert archiving.archive_job(harness.svc, job.id).step is Step.DONE
    job = harness.get(job.id)
    (img,) = job.images
    assert img.bytes == size
    assert img.sha256 == harness.sim.image_sha256(job.provider_task_id, 0)
    head = harness.svc.s3.head_object(Bucket=img.s3_bucket, Key=img.s3_key)
    assert head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == img.sha256


# --- reconcile and sweep ----------------------------------------------------------------------------
def test_reconcile_finishes_a_job_whose_callbacks_were_lost(harness: Harness) -> None:
    job_id = harness.job({"prompt": "p", "n": 2})
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    harness.wait_sim_final(harness.get(job_id).provider_task_id or "")
    report = repair.reconcile(harness.svc)
    assert report.changed == 1
    job = harness.get(job_id)
    assert job.status == "succeeded"
    assert len(job.images) == 2
    assert [t.source for t in job.transitions][-1] == "poll"
    with session_scope(harness.svc.sessions) as s:
        queued_work = set(s.scalars(select(Outbox.task).where(Outbox.args[0].as_string() == job_id)))
    assert {"archive_job", "release_slots"} <= queued_work


def test_sweep_dispatches_unarchived_and_counts_images_at_risk(harness: Harness) -> None:
    job = harness.submit_and_finish()
    with session_scope(harness.svc.sessions) as s:
        img = s.scalars(select(Image).where(Image.job_id == job.id)).one()
        img.provider_created_at = img.provider_created_at.replace(year=img.provider_created_at.year - 1)
    harness.published.clear()  # the poll's own archive row went out after its commit
    report = repair.sweep(harness.svc, dry_run=True)
    assert report.jobs == [job.id] and report.at_risk == 1
    assert all(name != "archive_job" for name, _ in harness.published)
    repair.sweep(harness.svc)
    assert ("archive_job", [job.id]) in harness.published


# --- outbox -----------------------------------------------------------------------------------------
def test_outbox_survives_a_broker_outage(harness: Harness) -> None:
    # A session without the after-commit hook: its row waits for the relay.
    with session_scope(make_sessionmaker(harness.svc.engine)) as s:
        job_id = create_job(s, {"prompt": "p", "n": 1}, provider="kling").job.id
    dead = make_celery(Settings(celery_broker_url="redis://127.0.0.1:1/0"))
    assert relay(harness.svc.sessions, celery_publisher(dead, retry_policy=QUICK_RETRY)) == 0
    with session_scope(harness.svc.sessions) as s:
        row = s.scalars(select(Outbox).where(Outbox.args[0].as_string() == job_id)).one()
        assert row.dispatched_at is None and row.attempts == 1
    # The broker is back: the same row goes out, once.
    broker = redis.Redis.from_url("redis://127.0.0.1:6379/13")
    # The Redis transport keeps one list per priority step: "celery", "celery\x06\x163", ...
    lists = [
        f"celery{sep}{step}" for sep, step in (("", ""), ("\x06\x16", 3), ("\x06\x16", 6), ("\x06\x16", 9))
    ]
    broker.delete(*lists)
    alive = make_celery(Settings(celery_broker_url="redis://127.0.0.1:6379/13"))
    assert relay(harness.svc.sessions, celery_publisher(alive)) == 1
    assert sum(broker.llen(name) for name in lists) == 1
    assert relay(harness.svc.sessions, celery_publisher(alive)) == 0
    broker.delete(*lists)


def test_docker_compose_file_is_valid() -> None:
    result = subprocess.run(
        # Secrets come only from .env (tests/test_compose.py): the template stands in for it.
        ["docker-compose", "--env-file", ".env.example", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_each_job_goes_to_its_own_provider(harness: Harness) -> None:
    settings = harness.svc.settings.model_copy(
        update={
            "appypie_api_base": harness.sim.base_url,
            "appypie_subscription_key": SecretStr("gateway-subscription-key"),
        }
    )
    svc = Services(settings, sessions=harness.svc.sessions, limiter=harness.svc.limiter, s3=harness.svc.s3)
    with session_scope(svc.sessions) as s:
        job_id = create_job(s, {"prompt": "via the gateway", "n": 1}, provider="appypie").job.id
    assert submit.submit_job(svc, job_id).step is Step.DONE
    job = harness.get(job_id)
    assert job.status == "submitted" and job.provider_task_id
    harness.wait_sim_final(job.provider_task_id)
    # The gateway cannot look tasks up by our id: the reconciler asks by its task id.
    assert repair.reconcile(svc).changed == 1
    assert harness.get(job_id).status == "succeeded"


def test_a_provider_without_credentials_fails_the_job_clearly(harness: Harness) -> None:
    svc = Services(harness.svc.settings, sessions=harness.svc.sessions, limiter=harness.svc.limiter)
    with session_scope(svc.sessions) as s:
        job_id = create_job(s, {"prompt": "p", "n": 1}, provider="appypie").job.id
    assert submit.submit_job(svc, job_id).step is Step.FAILED
    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("failed", "provider_not_configured")
    assert "APPYPIE_SUBSCRIPTION_KEY" in (job.error_message or "")
    assert harness.sim.tasks_by_external_id(job_id) == []


def test_jobs_behind_a_head_that_does_not_fit_use_the_free_slots(harness: Harness) -> None:
    # Packing: 2 slots free, the head of the queue needs 4; the n=2 job behind it takes them. The
    # head is not starved: the limiter reserves its slots once it has waited `starve_after`
    # (tests/worker/test_limiter.py, test_a_big_job_is_not_starved_by_a_stream_of_small_jobs).
    harness.svc.limiter.limit = 4
    running = harness.job({"prompt": "running", "n": 2})
    assert submit.submit_job(harness.svc, running).step is Step.DONE
    other = harness.job({"prompt": "other", "n": 2})
    assert submit.submit_job(harness.svc, other).step is Step.DONE
    head = harness.job({"prompt": "head", "n": 4})
    assert submit.submit_job(harness.svc, head).step is Step.WAIT
    small = harness.job({"prompt": "small", "n": 2})
    assert slots.release_slots(harness.svc, running) == [small]
    assert submit.submit_job(harness.svc, small).step is Step.DONE
    assert harness.svc.limiter.holders() == {other: 2, small: 2}
