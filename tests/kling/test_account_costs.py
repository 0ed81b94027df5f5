"""`provider.account_costs()`: Kling's `GET /account/costs` over the wire, and the packs it reports."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer

from kling import (
    AccountCosts,
    AppyPieClient,
    AuthorizationInvalid,
    KlingClient,
    RateLimited,
    ResourcePack,
    UnexpectedResponseError,
    UnsupportedOperation,
)
from tests.kling.conftest import Sleeps, fail, ok
from tests.samples import load

PATH = "/account/costs"
DAY_MS = 86_400_000


def test_client_asks_for_400_days_and_parses_packs(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="GET").respond_with_json(load("kling/account-costs-200"))
    before = int(time.time() * 1000)
    costs = client.account_costs()
    after = int(time.time() * 1000)
    (req, _), *_ = server.log
    assert req.headers["Authorization"].startswith("Bearer ")
    start, end = int(req.args["start_time"]), int(req.args["end_time"])
    assert before <= end <= after
    assert end - start == 400 * DAY_MS
    assert [p.status for p in costs.packs] == ["online", "runOut", "expired"]
    first = costs.packs[0]
    assert first == ResourcePack(
        name="Image generation - 1000 units",
        id="509f3fd3d4f84f4e8bd5b5a4d6e0c9a1",
        type="decreasing_total",
        total_quantity=1000.0,
        remaining_quantity=118.0,
        status="online",
        purchase_time=datetime.fromtimestamp(1726124664.368, tz=UTC),
        effective_time=datetime.fromtimestamp(1726124664.368, tz=UTC),
        invalid_time=datetime.fromtimestamp(1728716664.368, tz=UTC),
    )
    # Only online packs count: the expired one still shows 40 units it can never spend.
    assert costs.remaining_online == 118.0


def test_no_packs_means_unknown(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="GET").respond_with_json(load("kling/account-costs-empty-200"))
    assert client.account_costs().remaining_online is None
    assert AccountCosts().remaining_online is None


def test_only_run_out_packs_mean_zero() -> None:
    body = load("kling/account-costs-200")["data"]
    body["resource_pack_subscribe_infos"] = body["resource_pack_subscribe_infos"][1:]
    assert AccountCosts.from_kling(body).remaining_online == 0.0


def test_unreadable_fields_become_none_and_bad_shapes_raise() -> None:
    pack = ResourcePack.from_kling(
        {"status": "online", "remaining_quantity": "lots", "total_quantity": "12", "invalid_time": "soon"}
    )
    assert (pack.remaining_quantity, pack.total_quantity, pack.invalid_time, pack.name) == (
        None,
        12.0,
        None,
        "",
    )
    assert AccountCosts((pack,)).remaining_online == 0.0
    assert AccountCosts.from_kling(None).remaining_online is None
    for data in ([], {"resource_pack_subscribe_infos": "x"}, {"resource_pack_subscribe_infos": [1]}):
        with pytest.raises(UnexpectedResponseError):
            AccountCosts.from_kling(data)


def test_rate_limit_is_retried_then_answered(server: HTTPServer, client: KlingClient, sleeps: Sleeps) -> None:
    server.expect_ordered_request(PATH, method="GET").respond_with_json(fail(1302, "too fast"), status=429)
    server.expect_ordered_request(PATH, method="GET").respond_with_json(
        ok({"resource_pack_subscribe_infos": []})
    )
    assert client.account_costs() == AccountCosts()
    assert len(sleeps) == 1


def test_errors_are_mapped(server: HTTPServer, client: KlingClient) -> None:
    server.expect_request(PATH, method="GET").respond_with_json(fail(1302, "too fast"), status=429)
    with pytest.raises(RateLimited):
        client.account_costs()
    server.clear()
    server.expect_request(PATH, method="GET").respond_with_json(fail(1002, "bad token"), status=401)
    with pytest.raises(AuthorizationInvalid):
        client.account_costs()


def test_gateway_has_no_costs(server: HTTPServer, gateway: AppyPieClient) -> None:
    with pytest.raises(UnsupportedOperation, match="costs"):
        gateway.account_costs()
    assert server.log == []


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
PACK_FIELDS = (
    "resource_pack_name",
    "resource_pack_id",
    "resource_pack_type",
    "total_quantity",
    "remaining_quantity",
    "purchase_time",
    "effective_time",
    "invalid_time",
    "status",
)


@given(st.lists(st.fixed_dictionaries({}, optional=dict.fromkeys(PACK_FIELDS, JSON)), max_size=4))
def test_any_pack_fields_parse_without_crashing(packs: list[dict[str, object]]) -> None:
    costs = AccountCosts.from_kling({"resource_pack_subscribe_infos": packs})
    remaining = costs.remaining_online
    assert remaining is None if not packs else remaining is not None and remaining >= 0
