"""Several simulated accounts: keyed by credentials, own slots and resource pack, units deducted,
1102 when the pack cannot pay, `/account/costs` (lagged, 1 request/s), dry-after-K knobs."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from kling import KlingClient
from kling.auth import jwt_token
from kling.simulator import Simulator, SimulatorRemote
from tests.simulator.helpers import TIMEOUT, client, create, get, post, wait_until

PATH = "/v1/images/generations"
A_AK, A_SK = "ak-account-a-0123456789", "sk-account-a-0123456789abcdef-0123456789"
B_KEY = "api-key-account-b-0123456789abcdef"


def a_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_token(A_AK, A_SK)}"}


def b_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {B_KEY}"}


def two_accounts(sim: Simulator, **a: Any) -> None:
    sim.add_account("acct-a", access_key=A_AK, secret_key=A_SK, **{"concurrency": 1, **a})
    sim.add_account("acct-b", api_key=B_KEY, concurrency=2)


def code_of(resp: requests.Response) -> int:
    return int(resp.json()["code"])


def test_credentials_choose_the_account_and_each_has_its_own_slots(simulator_factory):
    sim = simulator_factory(concurrency=5, submitted_seconds=30, processing_seconds=30)
    two_accounts(sim)
    assert code_of(post(sim, PATH, {"prompt": "a"}, a_headers())) == 0
    over = post(sim, PATH, {"prompt": "a"}, a_headers())
    assert (over.status_code, code_of(over)) == (429, 1303)
    # B and the default account (the test keys, global knobs) are not held up by A's slot.
    assert code_of(post(sim, PATH, {"prompt": "b", "n": 2}, b_headers())) == 0
    create(sim, n=5)
    by_name = {a["name"]: a for a in sim.accounts()}
    assert by_name["acct-a"]["creates"] == 1
    assert by_name["acct-a"]["refused_by_code"] == {"1303": 1}
    assert by_name["acct-a"]["max_slots_in_use"] == 1
    assert by_name["acct-b"]["slots_in_use"] == 2
    assert by_name["default"]["concurrency"] == 5 and by_name["default"]["creates"] == 1
    assert {t["account"] for t in sim.tasks()} == {"acct-a", "acct-b", "default"}


def test_unknown_or_wrong_credentials_keep_default_behaviour(simulator_factory):
    sim = simulator_factory()
    two_accounts(sim)
    wrong = {"Authorization": f"Bearer {jwt_token(A_AK, 'not-the-secret-key-0123456789-0123456789')}"}
    assert code_of(post(sim, PATH, {"prompt": "x"}, wrong)) == 1002
    assert code_of(post(sim, PATH, {"prompt": "x"}, {"Authorization": "Bearer nobody"})) == 1002
    expired = {"Authorization": f"Bearer {jwt_token(A_AK, A_SK, now=1_000_000)}"}
    assert code_of(post(sim, PATH, {"prompt": "x"}, expired)) == 1004
    assert sim.create_count == 0


def test_account_code_knob_is_the_default_accounts(simulator_factory):
    sim = simulator_factory(account_code=1101)
    two_accounts(sim)
    assert code_of(post(sim, PATH, {"prompt": "x"})) == 1101
    assert code_of(post(sim, PATH, {"prompt": "x"}, b_headers())) == 0
    sim.add_account("acct-b", account_code=1304)
    assert code_of(post(sim, PATH, {"prompt": "x"}, b_headers())) == 1304


def test_succeeded_tasks_deduct_units_and_an_empty_pack_answers_1102(simulator_factory):
    sim = simulator_factory(unit_cost_per_image=1.5)
    two_accounts(sim, units=4, concurrency=5)
    first = post(sim, PATH, {"prompt": "x", "n": 2}, a_headers()).json()["data"]
    # 3 units reserved by the running task: 1 left cannot pay for another image (1.5).
    refused = post(sim, PATH, {"prompt": "x"}, a_headers())
    assert (refused.status_code, code_of(refused)) == (429, 1102)
    wait_until(lambda: sim.account("acct-a")["units"] == 1.0, what="units deducted")
    done = get(sim, f"{PATH}/{first['task_id']}", a_headers()).json()["data"]
    assert done["final_unit_deduction"] == "3"
    assert sim.account("acct-a")["units_used"] == 3.0
    assert sim.account("acct-a")["refused_by_code"] == {"1102": 1}
    # B has no pack limit of its own (units unset) and is untouched.
    assert sim.account("acct-b")["units_used"] == 0.0


def test_failed_tasks_cost_nothing_and_a_spent_pack_is_run_out(simulator_factory):
    sim = simulator_factory()
    two_accounts(sim, units=1)
    failed = post(sim, PATH, {"prompt": "[fail] x"}, a_headers()).json()["data"]
    wait_until(
        lambda: get(sim, f"{PATH}/{failed['task_id']}", a_headers()).json()["data"]["task_status"] == "failed"
    )
    assert get(sim, f"{PATH}/{failed['task_id']}", a_headers()).json()["data"]["final_unit_deduction"] == "0"
    assert sim.account("acct-a")["units"] == 1.0
    assert code_of(post(sim, PATH, {"prompt": "x"}, a_headers())) == 0
    wait_until(lambda: sim.account("acct-a")["status"] == "runOut", what="pack spent")
    assert code_of(post(sim, PATH, {"prompt": "x"}, a_headers())) == 1102


def test_top_up_and_dry_through_the_remote(simulator_factory):
    sim = simulator_factory()
    with SimulatorRemote(sim.base_url) as remote:
        added = remote.add_account("acct-b", api_key=B_KEY, concurrency=2, units=0)
        assert added["status"] == "runOut" and added["api_key"] == "***"
        assert B_KEY not in requests.get(sim.base_url + "/_sim/accounts", timeout=TIMEOUT).text
        assert code_of(post(sim, PATH, {"prompt": "x"}, b_headers())) == 1102
        assert remote.set_pack("acct-b", units=10)["status"] == "online"
        assert code_of(post(sim, PATH, {"prompt": "x"}, b_headers())) == 0
        remote.set_pack("acct-b", status="expired")
        assert code_of(post(sim, PATH, {"prompt": "x"}, b_headers())) == 1102
        # The default account can be dried and topped up too (the demo does this).
        remote.set_pack("default", status="runOut")
        assert code_of(post(sim, PATH, {"prompt": "x"})) == 1102
        remote.set_pack("default", units=100)
        assert code_of(post(sim, PATH, {"prompt": "x"})) == 0
        assert remote.account("acct-b")["refused_by_code"] == {"1102": 2}
        assert [a["name"] for a in remote.accounts()] == ["default", "acct-b"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/_sim/accounts", {"name": "Bad Name"}, 400),
        ("/_sim/accounts", {"name": "x", "colour": "red"}, 400),
        ("/_sim/accounts", {"name": "x", "concurrency": -1}, 400),
        ("/_sim/accounts", {"name": "x", "units": "lots"}, 400),
        ("/_sim/accounts", [], 400),
        ("/_sim/accounts/nobody/pack", {"units": 1}, 404),
        ("/_sim/accounts/default/pack", {"status": "gone"}, 400),
        ("/_sim/accounts/default/pack", {"units": -1}, 400),
        ("/_sim/accounts/default/pack", {}, 400),
    ],
)
def test_bad_inspection_requests_name_the_field(simulator_factory, path, body, status):
    sim = simulator_factory()
    resp = requests.post(sim.base_url + path, json=body, timeout=TIMEOUT)
    assert resp.status_code == status
    assert resp.json()["error"]
    assert [a["name"] for a in sim.accounts()] == ["default"]


def test_external_ids_and_lookups_are_per_account(simulator_factory):
    sim = simulator_factory()
    two_accounts(sim)
    on_a = post(sim, PATH, {"prompt": "x", "external_task_id": "job-1"}, a_headers()).json()["data"]
    # The same external id on another account is a second task (double billing is visible).
    assert code_of(post(sim, PATH, {"prompt": "x", "external_task_id": "job-1"}, b_headers())) == 0
    assert len(sim.tasks_by_external_id("job-1")) == 2
    assert code_of(post(sim, PATH, {"prompt": "x", "external_task_id": "job-1"}, a_headers())) == 1201
    assert code_of(get(sim, f"{PATH}/{on_a['task_id']}", b_headers())) == 1203
    assert code_of(get(sim, f"{PATH}/{on_a['task_id']}", a_headers())) == 0
    listed = get(sim, PATH, b_headers()).json()["data"]
    assert [t["task_info"]["external_task_id"] for t in listed] == ["job-1"]
    assert on_a["task_id"] not in {t["task_id"] for t in listed}


def test_account_costs_in_klings_shape_through_the_sdk(simulator_factory):
    sim = simulator_factory(unit_cost_per_image=1)
    sim.add_account("acct-a", access_key=A_AK, secret_key=A_SK, units=10)
    with KlingClient(access_key=A_AK, secret_key=A_SK, base_url=sim.base_url) as kc:
        costs = kc.account_costs()
    (pack,) = costs.packs
    assert (pack.status, pack.remaining_quantity, pack.total_quantity) == ("online", 10.0, 10.0)
    assert costs.remaining_online == 10.0
    sim.set_pack("acct-a", status="runOut")
    with client(sim) as kc:
        # The default account: no pack limit, reported as a large online pack.
        assert (kc.account_costs().remaining_online or 0) > 1000
    assert sim.account("acct-a")["costs_requests"] == 1


def test_account_costs_at_most_once_a_second_and_times_required(simulator_factory):
    sim = simulator_factory()
    window = {"start_time": 0, "end_time": 1}
    assert code_of(get(sim, "/account/costs", **window)) == 0
    again = get(sim, "/account/costs", **window)
    assert (again.status_code, code_of(again)) == (429, 1302)
    assert sim.account("default")["costs_refused"] == 1
    assert code_of(get(sim, "/account/costs", start_time=0)) == 1200


def test_costs_lag_reports_an_old_balance(simulator_factory):
    sim = simulator_factory(costs_lag_seconds=3600)
    sim.add_account("acct-a", access_key=A_AK, secret_key=A_SK, units=5)
    post(sim, PATH, {"prompt": "x", "n": 2}, a_headers())
    wait_until(lambda: sim.account("acct-a")["units"] == 3.0, what="units deducted")
    with KlingClient(access_key=A_AK, secret_key=A_SK, base_url=sim.base_url) as kc:
        assert kc.account_costs().packs[0].remaining_quantity == 5.0


def test_pack_runs_dry_after_k_creates_and_comes_back(simulator_factory):
    sim = simulator_factory(pack_dry_after_creates=2, pack_dry_seconds=0.3, concurrency=10)
    create(sim)
    create(sim)
    assert sim.account("default")["status"] == "runOut"
    assert code_of(post(sim, PATH, {"prompt": "x"})) == 1102
    wait_until(lambda: code_of(post(sim, PATH, {"prompt": "x"})) == 0, what="pack back")
    # Once: it does not run dry again after another K creates.
    create(sim)
    create(sim)
    assert sim.account("default")["status"] == "online"
    assert sim.create_count == 5


def test_pack_dry_for_good(simulator_factory):
    sim = simulator_factory()
    sim.add_account("acct-a", access_key=A_AK, secret_key=A_SK, pack_dry_after_creates=1)
    assert code_of(post(sim, PATH, {"prompt": "x"}, a_headers())) == 0
    assert code_of(post(sim, PATH, {"prompt": "x"}, a_headers())) == 1102
    assert sim.account("acct-a")["status"] == "runOut"
    assert code_of(post(sim, PATH, {"prompt": "x"})) == 0


def test_gateway_keys_choose_the_account(simulator_factory):
    sim = simulator_factory(subscription_key="default-gateway-key-0123456789")
    sim.add_account("gw", subscription_key="gw-key-0123456789abcdef", units=0)
    gw = {"Ocp-Apim-Subscription-Key": "gw-key-0123456789abcdef"}
    refused = post(sim, "/kling-ai-image/v1/getImageTask", {"prompt": "x"}, gw)
    assert refused.status_code == 429
    assert sim.account("gw")["refused_by_code"] == {"1102": 1}
    ok = post(
        sim,
        "/kling-ai-image/v1/getImageTask",
        {"prompt": "x"},
        {"Ocp-Apim-Subscription-Key": "default-gateway-key-0123456789"},
    )
    assert ok.status_code == 200
