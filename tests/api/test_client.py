"""klingctl.client.Client against the real app served over HTTP (committing PostgreSQL)."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from sqlalchemy import update

from kling.callbacks import SignatureError, sign_callback
from klingctl.client import ApiError, Client
from models.db import session_scope
from models.tables import Job
from models.tenants import create_tenant
from tests.api.conftest import TEST_NOTIFY_SECRET, Served
from tests.conftest import TEST_API_TOKEN

pytestmark = pytest.mark.integration

PARAMS = {"prompt": "a lighthouse", "n": 1}


@pytest.fixture
def client(served_api: Served) -> Client:
    return Client(served_api.url, token=TEST_API_TOKEN)


def test_create_get_and_idempotency(client: Client) -> None:
    key = f"order-{secrets.token_hex(4)}"
    job = client.create(PARAMS, metadata={"order": 42}, deadline_seconds=600, idempotency_key=key)
    assert job["status"] == "queued" and job["metadata"] == {"order": 42} and job["deadline_at"]
    assert client.create(PARAMS, metadata={"order": 42}, idempotency_key=key)["id"] == job["id"]
    assert client.get(job["id"]) == client.get(job["id"])
    assert client.get(job["id"])["params"] == PARAMS


def test_errors_carry_the_status_the_message_and_the_fields(client: Client) -> None:
    with pytest.raises(ApiError) as bad:
        client.create({"prompt": "x", "n": 99})
    assert bad.value.status == 422 and bad.value.fields[0]["field"] == "n"
    with pytest.raises(ApiError) as unknown:
        client.get("00000000-0000-4000-8000-000000000000")
    assert (unknown.value.status, unknown.value.message) == (404, "unknown job")
    with pytest.raises(ApiError) as unauthorized:
        Client(client.base_url, token="wrong").get("00000000-0000-4000-8000-000000000000")
    assert unauthorized.value.status == 401


def test_jobs_iterates_every_page(client: Client, served_api: Served) -> None:
    marker = secrets.token_hex(4)
    made = [client.create(PARAMS, metadata={"run": marker})["id"] for _ in range(5)]
    for job_id in made[:3]:
        client.cancel(job_id)
    seen = [
        j["id"]
        for j in client.jobs(status="cancelled", page_size=2)
        if (j["metadata"] or {}).get("run") == marker
    ]
    assert seen == list(reversed(made[:3]))  # newest first, across pages of two


def test_cancel_retry_and_wait(client: Client, served_api: Served) -> None:
    job = client.create(PARAMS)
    answer = client.cancel(job["id"])
    assert answer["outcome"] == "cancelled" and answer["job"]["status"] == "cancelled"
    assert client.wait(job["id"], timeout=5)["status"] == "cancelled"
    retry = client.retry(job["id"])
    assert (retry["status"], retry["retry_of"]) == ("queued", job["id"])
    with pytest.raises(TimeoutError, match="still queued"):
        client.wait(retry["id"], timeout=0.2, interval=0.05)
    with session_scope(served_api.sessions) as s:
        s.execute(update(Job).where(Job.id == retry["id"]).values(status="archived"))
    with pytest.raises(ApiError) as ended:
        client.cancel(retry["id"])
    assert ended.value.status == 409


def test_deliveries_and_replay(client: Client) -> None:
    job = client.create(PARAMS, webhook_url="https://hooks.example.org/k", webhook_events=["job.cancelled"])
    assert job["webhook_events"] == ["job.cancelled"]
    client.cancel(job["id"])
    assert client.deliveries(job["id"])["deliveries"] == []  # no worker here: nothing sent yet
    replayed = client.replay(job["id"], "job.cancelled")
    assert (replayed["event"], replayed["state"]) == ("job.cancelled", "pending")
    with pytest.raises(ApiError) as not_reached:
        client.replay(job["id"], "job.archived")
    assert not_reached.value.status == 409


def test_verify_event_checks_the_standard_webhooks_signature() -> None:
    body = json.dumps({"type": "job.archived", "data": {"id": "j-1"}}).encode()
    now = int(time.time())
    headers = {
        "webhook-id": "msg-1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign_callback(TEST_NOTIFY_SECRET, "msg-1", now, body),
    }
    assert Client.verify_event(TEST_NOTIFY_SECRET, headers, body)["type"] == "job.archived"
    with pytest.raises(SignatureError):
        Client.verify_event(TEST_NOTIFY_SECRET, headers, body.replace(b"j-1", b"j-2"))


def test_a_tenant_key_is_a_token_and_tenant_narrows_the_operators_calls(
    client: Client, served_api: Served
) -> None:
    with session_scope(served_api.sessions) as s:
        _, key = create_tenant(s, "acme")
        create_tenant(s, "beta")
    acme = Client(served_api.url, token=key)
    theirs = acme.create(PARAMS)
    assert theirs["tenant"] == "acme" and acme.get(theirs["id"])["id"] == theirs["id"]
    for_acme = client.create(PARAMS, tenant="acme")
    for_beta = client.create(PARAMS, tenant="beta")
    mine = client.create(PARAMS)
    assert (for_acme["tenant"], for_beta["tenant"], mine["tenant"]) == ("acme", "beta", "default")
    assert [j["id"] for j in acme.jobs()] == [for_acme["id"], theirs["id"]]
    assert [j["id"] for j in client.jobs(tenant="acme", page_size=1)] == [for_acme["id"], theirs["id"]]
    assert [j["id"] for j in client.jobs(tenant="beta", status="queued")] == [for_beta["id"]]
    assert {j["id"] for j in client.jobs()} == {theirs["id"], for_acme["id"], for_beta["id"], mine["id"]}
    with pytest.raises(ApiError) as hidden:
        acme.get(mine["id"])
    assert (hidden.value.status, hidden.value.message) == (404, "unknown job")
    with pytest.raises(ApiError) as refused:
        acme.create(PARAMS, tenant="beta")
    assert refused.value.status == 422 and refused.value.fields[0]["field"] == "tenant"
