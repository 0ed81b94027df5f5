"""Callbacks of every task kind, in both shapes (legacy task object and the 3.0 `outputs[]` one),
through the real receiver on both backends: each output becomes an `images` row with its type
(and duration for videos), and a failure keeps its message and shows its reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

from kling.kinds import KIND_NAMES, KINDS
from kling.types import Task
from models import Image, Job, create_job, transition
from models.documents import job_document
from tests.data.helpers import encode
from tests.data.test_webhook import Env, _env
from tests.samples import load

SHAPES = {"legacy": "callbacks/legacy-{kind}-succeed", "standard": "callbacks/standard-{kind}-succeeded"}


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue(
        "db_engine" if request.param == "postgresql" else "sqlite_engine"
    )
    return engine


@pytest.fixture
def signed_env(engine: Engine) -> Iterator[Env]:
    yield from _env(engine, signed=True)


def _task_id(body: dict[str, Any]) -> str:
    return str(body.get("task_id") or body["id"])


def _submitted_job(env: Env, kind: str, task_id: str) -> str:
    job = create_job(env.session, {"prompt": "p"}, provider="kling", kind=kind).job
    transition(env.session, job, "submitted", source="worker", provider_task_id=task_id)
    env.session.commit()
    return job.id


def _rows(env: Env, job_id: str) -> list[Image]:
    env.session.expire_all()
    return list(env.session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_output_of_every_kind_is_recorded_with_its_type(signed_env: Env, kind: str, shape: str) -> None:
    env = signed_env
    body = load(SHAPES[shape].format(kind=kind))
    expected = Task.from_kling(body) if shape == "legacy" else Task.from_standard(body)
    job_id = _submitted_job(env, kind, _task_id(body))

    answer = env.post_signed(job_id, encode(body))

    assert answer.status_code == 200 and answer.get_json() == {"outcome": "applied"}
    rows = _rows(env, job_id)
    assert rows, "a successful report must record its outputs"
    assert [(r.index, r.source_url, r.type) for r in rows] == [
        (o.index, o.url, o.type) for o in expected.outputs
    ]
    assert {r.type for r in rows} == {KINDS[kind].yields}
    for row in rows:
        # Videos carry their length; images have none.
        assert (row.duration is not None) is (row.type == "video")
    job = env.session.get(Job, job_id)
    assert job is not None and job.status == "succeeded" and job.kind == kind


@pytest.mark.parametrize("shape", ["legacy", "standard"])
def test_an_output_with_only_a_watermark_url_is_an_output(signed_env: Env, shape: str) -> None:
    env = signed_env
    body = load(f"callbacks/{shape}-watermark-only")
    job_id = _submitted_job(env, "image", _task_id(body))

    assert env.post_signed(job_id, encode(body)).get_json() == {"outcome": "applied"}

    rows = _rows(env, job_id)
    assert len(rows) == 1 and "watermark" in rows[0].source_url


@pytest.mark.parametrize("shape", ["legacy", "standard"])
def test_a_failure_keeps_its_message_and_shows_its_reason(signed_env: Env, shape: str) -> None:
    env = signed_env
    body = load(f"callbacks/{shape}-failed")
    job_id = _submitted_job(env, "text_to_video", _task_id(body))

    assert env.post_signed(job_id, encode(body)).get_json() == {"outcome": "applied"}

    message = body.get("task_status_msg", body.get("message"))
    env.session.expire_all()
    doc = job_document(env.session, job_id)
    assert doc is not None
    assert doc["status"] == "failed" and doc["error"] == {"code": "provider_failed", "message": message}
    assert doc["failure_reason"] == Task.from_kling(load("callbacks/legacy-failed")).failure_reason
    assert doc["failure_reason"] == "content_policy"
