"""Tenants over HTTP (webhook/auth.py, models/tenants.py): tenant keys, whose jobs a caller sees,
the `tenant` field and list parameter, per-tenant limits and Idempotency-Keys, and the operator's
API_TOKEN, against the real PostgreSQL (rolled back per test)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update

from models.tables import Image, Job, Notification
from models.tenants import create_tenant, revoke_key, rotate_key
from tests.api.conftest import AUTH, Api, build_app, make_settings
from webhook.db import set_publisher

BODY = {"prompt": "a red fox in the snow", "n": 1}
Headers = dict[str, str]


def bearer(key: str) -> Headers:
    return {"Authorization": f"Bearer {key}"}


def new_tenant(api: Api, name: str, **limits: Any) -> Headers:
    """A committed tenant; the headers its key authenticates with."""
    _, key = create_tenant(api.session, name, **limits)
    api.session.commit()
    return bearer(key)


def create(api: Api, headers: Headers, body: dict[str, Any] | None = None, **more: str) -> Any:
    return api.client.post("/v1/jobs", json=BODY if body is None else body, headers={**headers, **more})


def job_for(api: Api, headers: Headers, **fields: Any) -> str:
    response = create(api, headers, {**BODY, **fields})
    assert response.status_code == 202, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def stored_tenant(api: Api, job_id: str) -> str | None:
    return api.session.scalar(select(Job.tenant).where(Job.id == job_id))


def jobs_count(api: Api) -> int:
    return api.session.scalar(select(func.count()).select_from(Job)) or 0


def listed(api: Api, headers: Headers, query: str = "") -> list[str]:
    response = api.client.get(f"/v1/jobs{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [j["id"] for j in response.get_json()["jobs"]]


@pytest.fixture
def acme(api: Api) -> Headers:
    return new_tenant(api, "acme")


@pytest.fixture
def beta(api: Api) -> Headers:
    return new_tenant(api, "beta")


# --- keys -------------------------------------------------------------------------------------------
def test_a_tenant_key_creates_jobs_for_its_tenant(api: Api, acme: Headers) -> None:
    response = create(api, acme)
    assert response.status_code == 202
    doc = response.get_json()
    assert doc["tenant"] == "acme" and stored_tenant(api, doc["id"]) == "acme"
    shown = api.client.get(f"/v1/jobs/{doc['id']}", headers=acme)
    assert shown.status_code == 200 and shown.get_json()["tenant"] == "acme"
    # The operator's jobs are the `default` tenant's unless the body names another.
    own = api.create(BODY).get_json()
    assert own["tenant"] == "default" and stored_tenant(api, own["id"]) == "default"


def test_a_revoked_key_is_401_and_the_tenants_jobs_stay(api: Api, acme: Headers) -> None:
    job_id = job_for(api, acme)
    revoke_key(api.session, "acme")
    api.session.commit()
    for response in (create(api, acme), api.client.get(f"/v1/jobs/{job_id}", headers=acme)):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.get(f"/v1/jobs/{job_id}").get_json()["tenant"] == "acme"


def test_a_rotated_key_replaces_the_old_one_at_once(api: Api, acme: Headers) -> None:
    job_id = job_for(api, acme)
    fresh = bearer(rotate_key(api.session, "acme"))
    api.session.commit()
    assert api.client.get("/v1/jobs", headers=acme).status_code == 401
    assert listed(api, fresh) == [job_id]  # the same tenant, its jobs with it
    assert create(api, fresh).get_json()["tenant"] == "acme"


@pytest.mark.parametrize(
    "token",
    ["kt_" + secrets.token_urlsafe(32), "kt_", "kt_" + "x" * 500],
    ids=["unknown", "bare-prefix", "long"],
)
def test_a_key_no_tenant_has_is_401(api: Api, acme: Headers, token: str) -> None:
    response = api.client.get("/v1/jobs", headers=bearer(token))
    assert response.status_code == 401 and response.get_json() == {"error": "invalid bearer token"}


def test_the_operator_token_works_even_when_it_starts_like_a_tenant_key(api: Api, s3_client: Any) -> None:
    token = "kt_" + secrets.token_urlsafe(32)  # in no tenant's row
    app, _ = build_app(
        make_settings(api_token=SecretStr(token)), api.app.extensions["kling.sessions"], s3_client
    )
    set_publisher(app, lambda name, args: None)
    client, operator = app.test_client(), bearer(token)
    acme = new_tenant(api, "acme")
    theirs = client.post("/v1/jobs", json=BODY, headers=acme).get_json()["id"]
    created = client.post("/v1/jobs", json=BODY, headers=operator)
    assert created.status_code == 202 and created.get_json()["tenant"] == "default"
    # The operator's powers: every tenant's jobs, the operator-only routes.
    assert {j["id"] for j in client.get("/v1/jobs", headers=operator).get_json()["jobs"]} == {
        theirs,
        created.get_json()["id"],
    }
    assert client.get("/v1/accounts", headers=operator).status_code == 200


# --- visibility -------------------------------------------------------------------------------------
def test_lists_hold_the_callers_jobs_and_the_operator_filters_by_tenant(
    api: Api, acme: Headers, beta: Headers
) -> None:
    acme_jobs = [job_for(api, acme, prompt=f"a{i}") for i in range(3)]
    beta_job = job_for(api, beta)
    operator_job = api.create(BODY).get_json()["id"]
    # One transaction gives every row the same created_at: the id breaks the tie.
    newest_first = list(
        api.session.scalars(
            select(Job.id).where(Job.tenant == "acme").order_by(Job.created_at.desc(), Job.id.desc())
        )
    )
    assert sorted(newest_first) == sorted(acme_jobs)

    assert listed(api, acme) == newest_first
    assert listed(api, beta) == [beta_job]
    assert set(listed(api, AUTH)) == {*acme_jobs, beta_job, operator_job}
    assert listed(api, AUTH, "?tenant=acme") == newest_first
    assert listed(api, AUTH, "?tenant=default") == [operator_job]
    assert listed(api, AUTH, "?tenant=nobody") == []
    # `tenant` narrows a tenant key's list, never widens it.
    assert listed(api, beta, "?tenant=acme") == []
    assert listed(api, acme, "?tenant=acme&status=queued") == newest_first
    # Pages of a tenant's list stay its own.
    first = api.client.get("/v1/jobs?limit=2", headers=acme).get_json()
    rest = api.client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=acme).get_json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == newest_first and rest["next_cursor"] is None


@pytest.fixture
def acme_jobs(api: Api, acme: Headers) -> dict[str, str]:
    """acme's jobs: one queued, one cancelled (with a webhook, its job.cancelled due), each with
    an image row not yet archived (the operator's image answer: 409)."""
    queued = job_for(api, acme)
    ended = job_for(api, acme, webhook_url="https://hooks.example.org/done")
    assert api.client.post(f"/v1/jobs/{ended}/cancel", headers=acme).status_code == 200
    for job_id in (queued, ended):
        api.session.add(Image(job_id=job_id, index=0, source_url="https://cdn.klingai.com/x.png"))
    api.session.commit()
    return {"queued": queued, "ended": ended}


# (method, path, which of acme's jobs, the operator's answer)
ROUTES = [
    ("get", "/v1/jobs/{id}", "queued", 200),
    ("get", "/v1/jobs/{id}/images/0", "queued", 409),
    ("post", "/v1/jobs/{id}/cancel", "queued", 200),
    ("post", "/v1/jobs/{id}/retry", "ended", 202),
    ("get", "/v1/jobs/{id}/deliveries", "ended", 200),
    ("post", "/v1/jobs/{id}/deliveries/job.cancelled/replay", "ended", 202),
]


@pytest.mark.parametrize(("method", "path", "which", "operator_status"), ROUTES)
def test_another_tenants_job_is_404_on_every_route_and_untouched(
    api: Api,
    acme_jobs: dict[str, str],
    beta: Headers,
    method: str,
    path: str,
    which: str,
    operator_status: int,
) -> None:
    job_id = acme_jobs[which]
    url = path.format(id=job_id)
    before = (jobs_count(api), api.session.scalar(select(func.count()).select_from(Notification)))
    response = getattr(api.client, method)(url, headers=beta)
    assert response.status_code == 404 and response.get_json() == {"error": "unknown job"}
    api.session.expire_all()
    job = api.session.get(Job, job_id)
    assert job is not None and job.status == which.replace("ended", "cancelled")
    assert job.cancel_requested_at is None
    after = (jobs_count(api), api.session.scalar(select(func.count()).select_from(Notification)))
    assert after == before  # no retry made, no delivery queued
    # The same request from the operator reaches the job.
    assert getattr(api.client, method)(url, headers=AUTH).status_code == operator_status


@pytest.mark.parametrize(("method", "path", "which", "operator_status"), ROUTES)
def test_a_tenant_reaches_its_own_job_on_every_route(
    api: Api,
    acme_jobs: dict[str, str],
    acme: Headers,
    method: str,
    path: str,
    which: str,
    operator_status: int,
) -> None:
    url = path.format(id=acme_jobs[which])
    assert getattr(api.client, method)(url, headers=acme).status_code == operator_status


def test_a_retry_belongs_to_the_retried_jobs_tenant(api: Api, acme: Headers, beta: Headers) -> None:
    job_id = job_for(api, acme)
    api.session.execute(update(Job).where(Job.id == job_id).values(status="failed"))
    api.session.commit()
    by_tenant = api.client.post(f"/v1/jobs/{job_id}/retry", headers=acme).get_json()
    by_operator = api.client.post(f"/v1/jobs/{job_id}/retry", headers=AUTH).get_json()
    for retry in (by_tenant, by_operator):
        assert (retry["retry_of"], retry["tenant"]) == (job_id, "acme")
        assert stored_tenant(api, retry["id"]) == "acme"
    assert set(listed(api, acme)) == {job_id, by_tenant["id"], by_operator["id"]}
    assert listed(api, beta) == []


# --- the create request's `tenant` ---------------------------------------------------------------------
def test_the_operator_creates_for_any_tenant(api: Api, acme: Headers) -> None:
    doc = api.create({**BODY, "tenant": "acme"}).get_json()
    assert doc["tenant"] == "acme" and stored_tenant(api, doc["id"]) == "acme"
    assert listed(api, acme) == [doc["id"]]
    assert api.create({**BODY, "tenant": None}).get_json()["tenant"] == "default"


def test_a_tenant_key_may_name_its_own_tenant_only(api: Api, acme: Headers, beta: Headers) -> None:
    assert create(api, acme, {**BODY, "tenant": "acme"}).get_json()["tenant"] == "acme"
    before = jobs_count(api)
    for name in ("beta", "default", ""):
        response = create(api, acme, {**BODY, "tenant": name})
        assert response.status_code == 422
        assert [(f["field"], f["rule"]) for f in response.get_json()["fields"]] == [("tenant", "tenant")]
    assert jobs_count(api) == before


@pytest.mark.parametrize(
    ("value", "rule"), [("nobody", "unknown"), ("", "unknown"), ("x" * 300, "unknown"), (7, "type")]
)
def test_an_unknown_or_malformed_tenant_is_422(api: Api, value: object, rule: str) -> None:
    response = api.create({**BODY, "tenant": value})
    assert response.status_code == 422
    assert [(f["field"], f["rule"]) for f in response.get_json()["fields"]] == [("tenant", rule)]
    assert jobs_count(api) == 0


def test_the_tenant_error_comes_with_the_other_fields_errors(api: Api) -> None:
    response = api.create({**BODY, "tenant": "nobody", "n": 99})
    assert {f["field"] for f in response.get_json()["fields"]} == {"tenant", "n"}


def test_a_job_needing_more_slots_than_the_tenants_max_is_422(api: Api) -> None:
    capped = new_tenant(api, "capped", max_slots=2)
    response = create(api, capped, {**BODY, "n": 3})
    assert response.status_code == 422
    (field,) = response.get_json()["fields"]
    assert (field["field"], field["rule"]) == ("n", "max_slots") and "at most 2" in field["message"]
    # The cap is the tenant's, whoever creates for it; other tenants have their own.
    assert api.create({**BODY, "n": 3, "tenant": "capped"}).status_code == 422
    assert jobs_count(api) == 0
    assert create(api, capped, {**BODY, "n": 2}).status_code == 202
    assert api.create({**BODY, "n": 3}).status_code == 202


# --- Idempotency-Key ---------------------------------------------------------------------------------
def test_an_idempotency_key_is_each_tenants_own(api: Api, acme: Headers, beta: Headers) -> None:
    key = {"Idempotency-Key": "order-1"}
    first = create(api, acme, **key)
    other = create(api, beta, **key)
    operators = api.create(BODY, **key)
    assert [r.status_code for r in (first, other, operators)] == [202, 202, 202]
    ids = [r.get_json()["id"] for r in (first, other, operators)]
    assert len(set(ids)) == 3
    assert [stored_tenant(api, i) for i in ids] == ["acme", "beta", "default"]
    again = create(api, acme, **key)
    assert again.status_code == 200 and again.get_json()["id"] == ids[0]
    # The operator creating for acme is in acme's key space.
    for_acme = api.create({**BODY, "tenant": "acme"}, **key)
    assert for_acme.status_code == 200 and for_acme.get_json()["id"] == ids[0]
    assert jobs_count(api) == 3


# --- operator-only routes --------------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/v1/accounts", "/v1/dashboard"])
def test_operator_routes_are_403_to_a_tenant_key(api: Api, acme: Headers, url: str) -> None:
    response = api.client.get(url, headers=acme)
    assert response.status_code == 403 and "API_TOKEN" in response.get_json()["error"]
    assert api.get(url).status_code == 200
    revoke_key(api.session, "acme")
    api.session.commit()
    assert api.client.get(url, headers=acme).status_code == 401  # who you are comes first
