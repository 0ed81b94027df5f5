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
from worker.outcome import Step

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
