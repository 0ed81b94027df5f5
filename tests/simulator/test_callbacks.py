"""Callbacks on every status change, Standard Webhooks signatures, and the callback fault knobs."""

from __future__ import annotations

import json

import pytest

from kling import SignatureError, TaskStatus, parse_callback, verify_callback_signature
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.simulator.helpers import create, wait_until


@pytest.fixture
def receiver(httpserver):
    """A real HTTP endpoint that answers 200 to every callback."""
    httpserver.expect_request("/cb", method="POST").respond_with_data("ok")
    return httpserver


def received(receiver):
    return [(dict(req.headers), req.get_data()) for req, _ in list(receiver.log)]


def settle(sim, receiver, count):
    """Wait until `count` callbacks arrived and the simulator recorded their outcome."""
    wait_until(
        lambda: len(received(receiver)) == count and len(sim.deliveries) == count, what=f"{count} callbacks"
    )


def statuses(receiver):
    return [json.loads(body)["task_status"] for _, body in received(receiver)]


def test_callback_for_every_status_change(simulator, receiver):
    task = create(simulator, callback_url=receiver.url_for("/cb"), external_task_id="cb-1")
    settle(simulator, receiver, 3)
    assert statuses(receiver) == ["submitted", "processing", "succeed"]
    final = parse_callback(received(receiver)[-1][1])
    assert final.task_id == task["task_id"]
    assert final.status is TaskStatus.SUCCEEDED
    assert final.external_task_id == "cb-1"
    assert len(final.images) == 1
    body = json.loads(received(receiver)[-1][1])
    assert body["updated_at"] >= body["created_at"]
    deliveries = simulator.deliveries
    assert [d.task_status for d in deliveries] == ["submitted", "processing", "succeed"]
    assert all(d.outcome == "delivered" and d.http_status == 200 for d in deliveries)
    # Each record says when its POST started and when its answer came.
    assert all(d.sent_at is not None and d.sent_at <= d.at for d in deliveries)
    assert all("webhook-signature" not in headers for headers, _ in received(receiver))


def test_no_callback_url_no_callbacks(simulator):
    task = create(simulator)
    wait_until(lambda: simulator.task(task["task_id"])["status"] == "succeed")
    assert simulator.deliveries == []


def test_signed_callbacks_verify(simulator_factory, receiver):
    sim = simulator_factory(webhook_secret=TEST_WEBHOOK_SECRET)
    create(sim, callback_url=receiver.url_for("/cb"))
    settle(sim, receiver, 3)
    for headers, body in received(receiver):
        verify_callback_signature(TEST_WEBHOOK_SECRET, headers, body)
        with pytest.raises(SignatureError):
            verify_callback_signature(TEST_WEBHOOK_SECRET, headers, body + b" ")
    assert len({h["Webhook-Id"] for h, _ in received(receiver)}) == 3


def test_failed_delivery_is_recorded(simulator):
    # Nothing listens on port 9 of localhost (discard); the attempt fails and is recorded.
    create(simulator, callback_url="http://127.0.0.1:9/cb")
    wait_until(lambda: len(simulator.deliveries) == 3, what="3 attempts")
    assert all(d.outcome == "failed" and d.http_status is None and d.error for d in simulator.deliveries)


def test_receiver_error_status_is_recorded(simulator, httpserver):
    httpserver.expect_request("/cb").respond_with_data("no", status=503)
    create(simulator, callback_url=httpserver.url_for("/cb"))
    wait_until(lambda: len(simulator.deliveries) == 3)
    assert {d.http_status for d in simulator.deliveries} == {503}
    assert {d.outcome for d in simulator.deliveries} == {"failed"}


def test_drop(simulator, receiver):
    simulator.configure(callback_drop_rate=1.0)
    task = create(simulator, callback_url=receiver.url_for("/cb"))
    wait_until(lambda: len(simulator.deliveries) == 3, what="3 dropped")
    assert {d.outcome for d in simulator.deliveries} == {"dropped"}
    assert {d.sent_at for d in simulator.deliveries} == {None}
    assert simulator.task(task["task_id"])["status"] == "succeed"
    assert received(receiver) == []


def test_duplicate(simulator, receiver):
    simulator.configure(callback_duplicate_rate=1.0)
    create(simulator, callback_url=receiver.url_for("/cb"))
    settle(simulator, receiver, 6)
    assert statuses(receiver) == ["submitted", "submitted", "processing", "processing", "succeed", "succeed"]
    assert sum(d.duplicate for d in simulator.deliveries) == 3
    # A duplicate is a redelivery: same message id.
    ids = [h.get("Webhook-Id") for h, _ in received(receiver)]
    assert ids[0] == ids[1]


def test_reorder(simulator, receiver):
    simulator.configure(callback_reorder_rate=1.0)
    create(simulator, callback_url=receiver.url_for("/cb"))
    settle(simulator, receiver, 3)
    assert statuses(receiver) == ["processing", "submitted", "succeed"]
    assert [d.reordered for d in simulator.deliveries] == [False, True, False]


def test_delay(simulator, receiver):
    # A delayed callback goes out after a later one that was not delayed.
    simulator.configure(callback_delay_rate=1.0, callback_delay_seconds=1.0)
    task = create(simulator, callback_url=receiver.url_for("/cb"))
    simulator.configure(callback_delay_rate=0.0)
    settle(simulator, receiver, 3)
    assert statuses(receiver) == ["processing", "succeed", "submitted"]
    assert simulator.deliveries[-1].delayed and simulator.deliveries[-1].task_id == task["task_id"]


def test_per_task_override(simulator, receiver):
    simulator.configure(task_overrides={"quiet-job": {"callback_drop_rate": 1.0}})
    create(simulator, callback_url=receiver.url_for("/cb"), external_task_id="quiet-job")
    loud = create(simulator, callback_url=receiver.url_for("/cb"), external_task_id="loud-job")
    wait_until(lambda: len(simulator.deliveries) == 6, what="6 attempts")
    delivered = [json.loads(body)["task_id"] for _, body in received(receiver)]
    assert delivered == [loud["task_id"]] * 3
    assert sum(d.outcome == "dropped" for d in simulator.deliveries) == 3
