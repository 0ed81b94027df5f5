"""Callback bodies of both shapes, and Standard Webhooks signatures (official test vector)."""

from __future__ import annotations

import pytest

from kling import CallbackError, SignatureError, TaskStatus, parse_callback, verify_callback_signature
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.samples import load, raw

VECTOR_BODY = raw("callbacks/standard-signing-vector")
VECTOR_HEADERS = {
    "webhook-id": "9876543210",
    "webhook-timestamp": "1781080794",
    "webhook-signature": "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4=",
}
NOW = 1781080794
TASK_ID, JOB_ID = "CjMrVGdYqz4AAAAAAKCdvA", "5f6a0c0e-8a1b-4c8e-9d2f-0b1e2c3d4a5b"


@pytest.mark.parametrize(
    ("sample", "status"),
    [
        ("callbacks/legacy-submitted", TaskStatus.SUBMITTED),
        ("callbacks/legacy-processing", TaskStatus.PROCESSING),
        ("callbacks/legacy-succeed", TaskStatus.SUCCEEDED),
        ("callbacks/legacy-failed", TaskStatus.FAILED),
    ],
)
def test_parse_legacy_shape(sample: str, status: TaskStatus) -> None:
    task = parse_callback(raw(sample))
    assert (task.task_id, task.status, task.external_task_id) == (TASK_ID, status, JOB_ID)
    assert task.created_at is not None and round(task.created_at.timestamp() * 1000) == 1722769557708
    assert (
        task.updated_at is not None
        and round(task.updated_at.timestamp() * 1000) == load(sample)["updated_at"]
    )


def test_legacy_succeed_carries_the_images() -> None:
    task = parse_callback(raw("callbacks/legacy-succeed"))
    assert [image.index for image in task.images] == [0, 1]
    assert task.images[0].url.endswith(f"{TASK_ID}-0_raw_image_0.png")
    assert task.images[0].watermark_url is not None and "watermark" in task.images[0].watermark_url


def test_legacy_failed_keeps_the_reason() -> None:
    task = parse_callback(raw("callbacks/legacy-failed"))
    assert task.status_message == "Failure to pass the risk control system"
    assert task.images == ()


def test_parse_standard_shape() -> None:
    task = parse_callback(raw("callbacks/standard-succeeded"))
    assert (task.task_id, task.status, task.external_task_id) == (TASK_ID, TaskStatus.SUCCEEDED, JOB_ID)
    assert [image.index for image in task.images] == [0, 1]
    assert task.images[0].watermark_url is not None and "watermark" in task.images[0].watermark_url


def test_parse_console_test_callback() -> None:
    task = parse_callback(raw("callbacks/standard-console-test"))
    assert (task.task_id, task.status, task.images) == ("1234567890", TaskStatus.SUBMITTED, ())


def test_parse_test_vector_body() -> None:
    task = parse_callback(VECTOR_BODY)
    assert (task.task_id, task.status) == ("1234567890", TaskStatus.SUCCEEDED)


def test_parse_the_task_in_an_envelope() -> None:
    # Some senders wrap the task in the usual `{code, message, data}` envelope.
    task = parse_callback(raw("kling/query-succeed-200"))
    assert (task.task_id, task.status) == (TASK_ID, TaskStatus.SUCCEEDED)


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"foo": 1}', b'{"task_id": "t", "task_status": "odd"}']
)
def test_parse_rejects_other_bodies(body: bytes) -> None:
    with pytest.raises(CallbackError):
        parse_callback(body)


def test_official_vector_verifies() -> None:
    verify_callback_signature(TEST_WEBHOOK_SECRET, VECTOR_HEADERS, VECTOR_BODY, now=NOW)
    # Within the 5-minute window on either side.
    verify_callback_signature(TEST_WEBHOOK_SECRET, VECTOR_HEADERS, VECTOR_BODY, now=NOW + 300)
    verify_callback_signature(TEST_WEBHOOK_SECRET, VECTOR_HEADERS, VECTOR_BODY, now=NOW - 300)


def test_one_of_several_signatures_may_match() -> None:
    headers = {**VECTOR_HEADERS, "webhook-signature": "v1,AAAA " + VECTOR_HEADERS["webhook-signature"]}
    verify_callback_signature(TEST_WEBHOOK_SECRET, headers, VECTOR_BODY, now=NOW)


@pytest.mark.parametrize(
    ("secret", "headers", "body", "now"),
    [
        (TEST_WEBHOOK_SECRET, VECTOR_HEADERS, VECTOR_BODY.replace(b"succeeded", b"failed"), NOW),
        ("whsec_" + "b3RoZXJzZWNyZXRvdGhlcnNlY3JldG90aGVyc2VjcmV0MTI=", VECTOR_HEADERS, VECTOR_BODY, NOW),
        (TEST_WEBHOOK_SECRET, VECTOR_HEADERS, VECTOR_BODY, NOW + 301),
        (TEST_WEBHOOK_SECRET, VECTOR_HEADERS, VECTOR_BODY, NOW - 301),
        (TEST_WEBHOOK_SECRET, {**VECTOR_HEADERS, "webhook-id": "other"}, VECTOR_BODY, NOW),
        (
            TEST_WEBHOOK_SECRET,
            {k: v for k, v in VECTOR_HEADERS.items() if k != "webhook-signature"},
            VECTOR_BODY,
            NOW,
        ),
        (
            TEST_WEBHOOK_SECRET,
            {**VECTOR_HEADERS, "webhook-signature": "v2,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4="},
            VECTOR_BODY,
            NOW,
        ),
    ],
    ids=[
        "tampered body",
        "wrong secret",
        "301s late",
        "301s early",
        "other id",
        "no signature",
        "wrong version",
    ],
)
def test_bad_signatures_are_refused(secret: str, headers: dict[str, str], body: bytes, now: int) -> None:
    with pytest.raises(SignatureError):
        verify_callback_signature(secret, headers, body, now=now)
