"""Unsigned final callbacks are confirmed with the provider (issue 16): the real webhook on
PostgreSQL records them `unconfirmed`, `worker.polling.confirm` looks the task up at the simulator
over HTTP and applies the provider's answer, then the archiver runs as usual."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from kling.types import TaskStatus
from models.tokens import callback_token
from tests.conftest import TEST_CALLBACK_SECRET
from tests.data.helpers import encode, legacy_body
from tests.worker.harness import Harness
from webhook import create_app
from webhook.db import set_publisher
from worker import archiving, polling, submit
from worker.factory import make_celery
from worker.outcome import Step
from worker.tasks import CONFIRM_TASK, DISPATCH_TASK

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook(harness: Harness) -> Iterator[FlaskClient]:
    """The real receiver, unsigned (KLING_WEBHOOK_SECRET unset, the compose default), on the
    harness's database; what it publishes after a commit lands in `harness.published`."""
    settings = harness.svc.settings.model_copy(
        update={"callback_secret": SecretStr(TEST_CALLBACK_SECRET), "kling_webhook_secret": None}
    )
    app = create_app(settings)
    set_publisher(app, harness.svc.publish)
    yield app.test_client()
    app.extensions["kling.sessions"].kw["bind"].dispose()


def _post(client: FlaskClient, job_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    token = callback_token(TEST_CALLBACK_SECRET, job_id)
    answer = client.post(f"/callbacks/kling/{job_id}/{token}", data=encode(body))
    return answer.status_code, answer.get_json()


def _finished_at_provider(harness: Harness) -> tuple[str, str]:
    job_id = harness.job({"prompt": "a lighthouse", "n": 1})
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    task_id = harness.get(job_id).provider_task_id or ""
    harness.wait_sim_final(task_id)
    assert harness.sim.task(task_id)["status"] == "succeed"
    harness.published.clear()
    return job_id, task_id


def test_a_forged_unsigned_failure_ends_archived_never_failed(harness: Harness, webhook: FlaskClient) -> None:
    job_id, task_id = _finished_at_provider(harness)
    forged = legacy_body(task_id, "failed", message="forged by a token holder")
    assert _post(webhook, job_id, forged) == (200, {"outcome": "unconfirmed"})
    assert harness.get(job_id).status == "submitted"
    assert harness.published == [("confirm_job", [job_id])]

    assert polling.confirm(harness.svc, job_id) == "applied"
    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("succeeded", None)
    assert archiving.archive_job(harness.svc, job_id).step is Step.DONE
    job = harness.get(job_id)
    assert job.status == "archived"
    assert [t.to_status for t in job.transitions] == ["queued", "submitted", "succeeded", "archived"]
    assert "failed" not in {t.to_status for t in job.transitions}
    # A second lookup (a redelivered message) finds the job final and asks nothing.
    assert polling.confirm(harness.svc, job_id) == "already_final"


def test_a_genuine_unsigned_success_is_archived_with_the_providers_images(
    harness: Harness, webhook: FlaskClient
) -> None:
    job_id, task_id = _finished_at_provider(harness)
    # The callback's image URLs are not the provider's: only the lookup's are used.
    assert _post(webhook, job_id, legacy_body(task_id, "succeeded", n_images=3))[1] == {
        "outcome": "unconfirmed"
    }
    assert harness.get(job_id).images == []
    assert polling.confirm(harness.svc, job_id) == "applied"
    job = harness.get(job_id)
    assert job.status == "succeeded"
    assert [img.source_url for img in job.images] == [
        img.url for img in harness.svc.provider.get_image(task_id).images
    ]
    assert all(img.source_url.startswith(harness.sim.base_url) for img in job.images)
    assert archiving.archive_job(harness.svc, job_id).step is Step.DONE
    assert harness.get(job_id).status == "archived"


def test_a_lookup_that_finds_the_task_running_changes_nothing_final(
    harness: Harness, webhook: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id, task_id = _finished_at_provider(harness)
    running = harness.svc.provider.get_image(task_id)
    monkeypatch.setattr(
        harness.svc.provider,
        "get_task",
        lambda *args, **kwargs: type(running)(task_id=task_id, status=TaskStatus.PROCESSING),
    )
    assert _post(webhook, job_id, legacy_body(task_id, "failed"))[1] == {"outcome": "unconfirmed"}
    assert polling.confirm(harness.svc, job_id) == "applied"  # the provider's `processing`
    assert harness.get(job_id).status == "processing"
    assert harness.svc.limiter.holders() == {job_id: 1}  # still leased: the task runs


def test_a_failing_lookup_is_left_to_the_poller(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, _ = _finished_at_provider(harness)

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("provider unreachable")

    monkeypatch.setattr(harness.svc.provider, "get_task", down)
    assert polling.confirm(harness.svc, job_id) == "lookup_failed"
    assert harness.get(job_id).status == "submitted"


def _confirm_task(harness: Harness) -> Any:
    """The Celery task itself, run in this process on the harness's services."""
    app = make_celery(harness.svc.settings)
    app.kling_services = harness.svc
    return app.tasks[CONFIRM_TASK.name]


def test_the_confirm_that_frees_a_slot_submits_the_next_job_itself(harness: Harness) -> None:
    """One message and one hop fewer per hand-off: the freed slot's job is submitted in the same run."""
    harness.svc.limiter.limit = 1
    job_id, _ = _finished_at_provider(harness)
    queued = harness.job()
    assert submit.submit_job(harness.svc, queued).step is Step.WAIT
    harness.published.clear()
    assert _confirm_task(harness)(job_id) == "applied"
    assert harness.get(queued).status == "submitted"
    assert ("dispatch_job", [queued]) not in harness.published
    assert ("archive_job", [job_id]) in harness.published
    assert harness.svc.limiter.holders() == {queued: 1}


def test_a_submit_run_in_the_confirm_that_must_retry_goes_out_as_its_message(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.svc.limiter.limit = 1
    job_id, _ = _finished_at_provider(harness)
    queued = harness.job()
    assert submit.submit_job(harness.svc, queued).step is Step.WAIT
    sent: list[dict[str, Any]] = []
    task = _confirm_task(harness)
    monkeypatch.setattr(
        type(task.app.tasks[DISPATCH_TASK.name]), "apply_async", lambda self, **kw: sent.append(kw)
    )
    harness.sim.configure(concurrency=0)  # the provider answers 1303 to the create
    assert task(job_id) == "applied"
    assert harness.get(queued).status == "queued"
    assert [(m["args"], m["priority"], bool(m["kwargs"]["claim"])) for m in sent] == [([queued], 0, True)]
