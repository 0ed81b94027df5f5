"""End to end, one job of every task kind: the HTTP API -> a real Celery worker -> the simulator
over HTTP -> its signed callbacks (legacy task objects, or the 3.0 `outputs[]` shape) -> the
archiver -> moto S3. The poller and the reconciler are turned off, so only the callbacks can
report the outputs: each job's move to `succeeded` must come from a callback."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import select

from kling.kinds import KINDS
from models.db import session_scope
from models.tables import CallbackEvent, Transition
from tests.conftest import TEST_API_TOKEN, TEST_WEBHOOK_SECRET
from tests.kind_examples import VALID
from tests.worker import test_e2e
from tests.worker.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
make_stack = test_e2e.make_stack  # the stack fixture of the other end-to-end tests

IMAGE_KINDS = [name for name, kind in KINDS.items() if kind.yields == "image"]
VIDEO_KINDS = [name for name, kind in KINDS.items() if kind.yields == "video"]
# Callbacks are the only way a job can learn its outputs in these stacks.
NO_POLLING = {"poll_interval_seconds": 3600.0, "reconcile_after_seconds": 3600.0}
HTTP_TIMEOUT = 10


def _stack(make_stack: Any, shape: str) -> Stack:
    stack: Stack = make_stack(
        callbacks=True,
        concurrency=6,
        sim_knobs={"callback_shape": shape, "webhook_secret": TEST_WEBHOOK_SECRET},
        api_token=SecretStr(TEST_API_TOKEN),
        kling_webhook_secret=SecretStr(TEST_WEBHOOK_SECRET),
        **NO_POLLING,
    )
    return stack


def _create(stack: Stack, kind: str) -> str:
    """`POST /v1/jobs` over HTTP, as a client does."""
    body = {**VALID[kind][0], "kind": kind}
    answer = requests.post(
        f"{stack.settings.public_base_url}/v1/jobs",
        json=body,
        headers={"Authorization": f"Bearer {TEST_API_TOKEN}"},
        timeout=HTTP_TIMEOUT,
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def _run(stack: Stack, kinds: list[str]) -> dict[str, str]:
    job_ids = {kind: _create(stack, kind) for kind in kinds}
    stack.wait_final(list(job_ids.values()), timeout=120)
    return job_ids


def _assert_archived_through_callbacks(
    stack: Stack, job_ids: dict[str, str], s3_client: Any, shape: str
) -> None:
    sim = stack.simulator
    for kind, job_id in job_ids.items():
        (job,) = stack.jobs([job_id])
        assert (job.kind, job.status) == (kind, "archived"), (kind, job.error_code, job.error_message)
        # One job, one provider task (no double billing), created at the kind's endpoint.
        (task,) = sim.tasks_by_external_id(job_id)
        with session_scope(stack.sessions) as s:
            source = s.scalar(
                select(Transition.source).where(
                    Transition.job_id == job_id, Transition.to_status == "succeeded"
                )
            )
            succeeds = s.scalars(
                select(CallbackEvent.outcome).where(
                    CallbackEvent.job_id == job_id, CallbackEvent.task_status == "succeeded"
                )
            ).all()
        # The kind's final callback, in this shape, was parsed and matched to its job. It applied
        # the end, unless the poller's round (timed to the task's expected end even with
        # NO_POLLING's interval) got there first on a loaded machine: then it was a duplicate.
        assert succeeds, (kind, shape)
        late = set(succeeds) <= {"duplicate", "stale"}
        assert source == "callback" or late, (kind, shape, source, succeeds)
        rows = stack.images(job_id)
        yields = KINDS[kind].yields
        assert len(rows) == KINDS[kind].output_count(job.params), kind
        for row in rows:
            assert (row.type, row.status) == (yields, "archived"), (kind, row.index)
            assert (row.duration is not None) is (yields == "video")
            if yields == "video":
                expected = sim.video_sha256(task["task_id"], row.index)
            else:
                expected = sim.image_sha256(task["task_id"], row.index)
            assert row.sha256 == expected
            assert row.s3_bucket is not None and row.s3_key is not None
            body = s3_client.get_object(Bucket=row.s3_bucket, Key=row.s3_key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == expected and len(body) == row.bytes
    assert sim.slots_in_use == 0


@pytest.mark.parametrize("shape", ["legacy", "v3"])
def test_every_image_kind_goes_from_the_api_to_s3(make_stack: Any, s3_client: Any, shape: str) -> None:
    stack = _stack(make_stack, shape)
    job_ids = _run(stack, IMAGE_KINDS)
    _assert_archived_through_callbacks(stack, job_ids, s3_client, shape)


@pytest.mark.parametrize("shape", ["legacy", "v3"])
def test_every_video_kind_goes_from_the_api_to_s3(make_stack: Any, s3_client: Any, shape: str) -> None:
    stack = _stack(make_stack, shape)
    job_ids = _run(stack, VIDEO_KINDS)
    _assert_archived_through_callbacks(stack, job_ids, s3_client, shape)
