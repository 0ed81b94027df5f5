"""`Task.units`: the units a finished task cost, read from both task shapes and never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling import Task, parse_callback
from kling.types import parse_units
from tests.samples import load, raw


def test_query_answers_carry_units() -> None:
    assert Task.from_kling(load("kling/query-succeed-200")["data"]).units == 2.0
    assert Task.from_kling(load("kling/query-failed-200")["data"]).units == 0.0
    # Not final yet: Kling sends no deduction.
    assert Task.from_kling(load("kling/query-processing-200")["data"]).units is None
    assert 2.0 in [t.units for t in map(Task.from_kling, load("kling/list-200")["data"])]


def test_legacy_callbacks_carry_units() -> None:
    assert parse_callback(raw("callbacks/legacy-succeed")).units == 2.0
    assert parse_callback(raw("callbacks/legacy-failed")).units == 0.0
    assert parse_callback(raw("callbacks/legacy-submitted")).units is None


def test_standard_callbacks_read_billing_units() -> None:
    assert parse_callback(raw("callbacks/standard-succeeded")).units == 2.0
    assert parse_callback(raw("callbacks/standard-console-test")).units is None


def test_standard_shape_prefers_final_unit_deduction_and_skips_cash_lines() -> None:
    body = load("callbacks/standard-succeeded")
    body["final_unit_deduction"] = "3.5"
    assert Task.from_standard(body).units == 3.5
    body.pop("final_unit_deduction")
    body["billing"] = [
        {"charge_type": "cash", "amount": "9", "package_type": "image"},
        {"charge_type": "unit", "amount": "1.5", "package_type": "image"},
        {"charge_type": "unit", "amount": "garbage", "package_type": "image"},
        "not an object",
    ]
    assert Task.from_standard(body).units == 1.5
    body["billing"] = [{"charge_type": "cash", "amount": "9"}]
    assert Task.from_standard(body).units is None
    body["billing"] = "nope"
    assert Task.from_standard(body).units is None


@pytest.mark.parametrize(
    ("value", "units"),
    [
        ("2", 2.0),
        (" 0.25 ", 0.25),
        (3, 3.0),
        (1.5, 1.5),
        (None, None),
        ("", None),
        ("two", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("1e400", None),
        (True, None),
        ([1], None),
        ({"units": 1}, None),
        ("9" * 40, None),
    ],
)
def test_parse_units(value: object, units: float | None) -> None:
    assert parse_units(value) == units


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(), st.lists))
def test_garbage_units_never_fail_the_task(value: object) -> None:
    body = load("kling/query-succeed-200")["data"]
    body["final_unit_deduction"] = value
    task = parse_callback(json.dumps(body).encode())
    assert task.units is None or task.units >= 0
