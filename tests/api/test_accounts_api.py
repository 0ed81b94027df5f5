"""GET /v1/accounts and the job document's `account`, `units` and `waiting_for`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from kling.kinds import KIND_NAMES
from models.base import utcnow
from models.tables import DisabledAccount, Job
from tests.api.conftest import TEST_APPYPIE_KEY, TEST_KLING_API_KEY, Api
from tests.conftest import TEST_SECRET_KEY
from webhook.accounts import SERVICES_KEY


def gate(api: Api) -> Any:
    """The in-memory pause gate the app's account view reads."""
    return api.app.extensions[SERVICES_KEY].account_gate


def queued_job(api: Api) -> str:
    answer = api.create({"prompt": "a lighthouse"})
    assert answer.status_code == 202
    job_id: str = answer.get_json()["id"]
    return job_id


def test_accounts_need_the_token(api: Api) -> None:
    assert api.client.get("/v1/accounts").status_code == 401


def test_accounts_show_state_slots_and_units_never_a_secret(api: Api) -> None:
    job_id = queued_job(api)
    api.session.execute(
        update(Job).where(Job.id == job_id).values(account="default", units=2.5, finished_at=utcnow())
    )
    api.session.commit()
    api.limiter.acquire("someone", 2)
    answer = api.get("/v1/accounts")
    assert answer.status_code == 200
    (account,) = answer.get_json()["accounts"]
    assert account == {
        "name": "default",
        "provider": "kling",
        "kinds": list(KIND_NAMES),
        "state": "active",
        "reason": None,
        "code": None,
        "message": None,
        "since": None,
        "concurrency": 5,
        "slots_in_use": 2,
        "units_today": 2.5,
    }
    for secret in (TEST_SECRET_KEY, TEST_KLING_API_KEY, TEST_APPYPIE_KEY):
        assert secret not in answer.get_data(as_text=True)


def test_a_paused_account_is_shown_with_its_reason(api: Api) -> None:
    gate(api).pause("default", 1102, "Resource pack depleted")
    (account,) = api.get("/v1/accounts").get_json()["accounts"]
    assert (account["state"], account["reason"], account["code"]) == ("paused", "paused: 1102", 1102)
    assert account["since"] is not None


def test_a_queued_job_says_what_it_waits_for(api: Api) -> None:
    job_id = queued_job(api)
    doc = api.get(f"/v1/jobs/{job_id}").get_json()
    assert (doc["account"], doc["units"], doc["waiting_for"]) == (None, None, None)

    api.limiter.acquire("someone", 5)
    assert api.get(f"/v1/jobs/{job_id}").get_json()["waiting_for"] == "slots"

    gate(api).pause("default", 1102, "dry")
    expected = {"reason": "no_active_account", "accounts": {"default": "paused: 1102"}}
    assert api.get(f"/v1/jobs/{job_id}").get_json()["waiting_for"] == expected
    (listed,) = api.get("/v1/jobs?status=queued").get_json()["jobs"]
    assert listed["waiting_for"] == expected


def test_a_disabled_account_is_shown_and_explains_the_wait(api: Api) -> None:
    api.session.add(DisabledAccount(name="default"))
    api.session.commit()
    job_id = queued_job(api)
    (account,) = api.get("/v1/accounts").get_json()["accounts"]
    assert (account["state"], account["reason"]) == ("disabled", "disabled")
    waiting = api.get(f"/v1/jobs/{job_id}").get_json()["waiting_for"]
    assert waiting == {"reason": "no_active_account", "accounts": {"default": "disabled"}}


def test_a_job_that_is_not_queued_waits_for_nothing(api: Api) -> None:
    job_id = queued_job(api)
    gate(api).pause("default", 1102, "dry")
    api.session.execute(update(Job).where(Job.id == job_id).values(status="failed"))
    api.session.commit()
    assert api.get(f"/v1/jobs/{job_id}").get_json()["waiting_for"] is None


def test_accounts_answer_503_when_their_states_cannot_be_read(api: Api, monkeypatch: Any) -> None:
    import redis

    def down(name: str) -> Any:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(gate(api), "state", down)
    answer = api.get("/v1/accounts")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "Redis" not in answer.get_data(as_text=True)
