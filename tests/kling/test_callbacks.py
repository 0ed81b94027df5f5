"""Callback bodies of both shapes, and Standard Webhooks signatures (official test vector)."""

from __future__ import annotations

import json

import pytest

from kling import CallbackError, SignatureError, TaskStatus, parse_callback, verify_callback_signature
from tests.conftest import TEST_WEBHOOK_SECRET

VECTOR_BODY = (
    b'{"id":"1234567890","status":"succeeded","message":"",'
    b'"create_time":1781080778802,"update_time":1781080794151}'
)
VECTOR_HEADERS = {
    "webhook-id": "9876543210",
    "webhook-timestamp": "1781080794",
    "webhook-signature": "v1,UsKlJP00XoQyOn410NM9xv34sP+Gl0jnOO9Lcpr7NJ4=",
}
NOW = 1781080794


def test_parse_legacy_shape() -> None:
    body = {
        "task_id": "t-1",
        "task_status": "succeed",
        "task_status_msg": "",
        "task_info": {"external_task_id": "job-1"},
        "created_at": 1722769557708,
        "updated_at": 1722769560000,
        "task_result": {"images": [{"index": 0, "url": "https://cdn.klingai.com/0.png"}]},
        "final_unit_deduction": "1",
    }
    task = parse_callback(json.dumps(body).encode())
    assert (task.task_id, task.status, task.external_task_id) == ("t-1", TaskStatus.SUCCEEDED, "job-1")
    assert task.images[0].url == "https://cdn.klingai.com/0.png"
    assert task.updated_at is not None and task.updated_at.timestamp() == 1722769560.0


def test_parse_standard_shape() -> None:
    body = {
        "id": "t-2",
        "status": "succeeded",
        "message": "",
        "create_time": 1781080778802,
        "update_time": 1781080794151,
        "external_id": "job-2",
        "outputs": [
            {
                "type": "image",
                "url": "https://cdn.klingai.com/a.png",
                "watermark_url": "https://cdn.klingai.com/w.png",
            }
        ],
    }
    task = parse_callback(json.dumps(body).encode())
    assert (task.task_id, task.status, task.external_task_id) == ("t-2", TaskStatus.SUCCEEDED, "job-2")
    assert task.images[0].watermark_url == "https://cdn.klingai.com/w.png"


def test_parse_test_vector_body() -> None:
    task = parse_callback(VECTOR_BODY)
    assert (task.task_id, task.status) == ("1234567890", TaskStatus.SUCCEEDED)


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
