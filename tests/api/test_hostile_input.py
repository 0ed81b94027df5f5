"""Every hostile input of issue 16 answers 4xx naming the field and writes nothing, on the real app
and PostgreSQL: list parameters, cursors, bodies PostgreSQL cannot store, content types, URL
lengths, Idempotency-Key misuse, odd job ids."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from models.tables import Job, Outbox
from tests.api.conftest import AUTH, Api
from webhook.body import MAX_PARAM_URL, MAX_WEBHOOK_URL, long_urls, unstorable

BODY = {"prompt": "a red fox in the snow", "n": 1}
SOME_ID = "00000000-0000-4000-8000-000000000000"


def written(api: Api) -> tuple[int, int]:
    jobs = api.session.scalar(select(func.count()).select_from(Job)) or 0
    return jobs, api.session.scalar(select(func.count()).select_from(Outbox)) or 0


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def post_raw(api: Api, raw: bytes, content_type: str | None = "application/json", **headers: str) -> Any:
    sent = {**AUTH, **headers}
    if content_type is not None:
        sent["Content-Type"] = content_type
    return api.client.post("/v1/jobs", data=raw, headers=sent)


def fields_of(response: Any) -> list[tuple[str, str]]:
    return [(f["field"], f["rule"]) for f in response.get_json()["fields"]]


# --- list parameters and cursors ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=\u00b2", "limit"),
        ("limit=\u00b9\u00b2", "limit"),
        ("limit=\u0661", "limit"),
        ("limit=\uff11", "limit"),  # fullwidth one
        ("limit=-1", "limit"),
        ("limit=+1", "limit"),
        ("limit=%201", "limit"),
        ("limit=1e2", "limit"),
        ("limit=0x10", "limit"),
        ("limit=" + "9" * 5000, "limit"),
        ("limit=", "limit"),
        ("limit=%00", "limit"),
        ("status=%00", "status"),
        ("status=" + "q" * 10_000, "status"),
        ("cursor=!!!!", "cursor"),
        ("cursor=" + cursor_of(b"\xff\xfe\x00"), "cursor"),
        ("cursor=" + cursor_of(b"not json"), "cursor"),
        ("cursor=" + cursor_of(b"null"), "cursor"),
        ("cursor=" + cursor_of(b"[1, 2]"), "cursor"),
        ("cursor=" + cursor_of(b'{"a": 1, "b": 2}'), "cursor"),
        ("cursor=" + cursor_of(b'["2026-01-01T00:00:00+00:00"]'), "cursor"),
        ("cursor=" + cursor_of(b"[1e999, 1e999]"), "cursor"),
        ("cursor=" + cursor_of(b"[" + b"9" * 5000 + b', "x"]'), "cursor"),
        ("cursor=" + cursor_of(b'["2026-01-01T00:00:00+00:00", 123456789012345678901234567890]'), "cursor"),
        ("cursor=" + cursor_of(f'["2026-01-01T00:00:00", "{SOME_ID}"]'.encode()), "cursor"),  # no offset
        ("cursor=" + cursor_of(f'["0001-01-01T00:00:00+01:00", "{SOME_ID}"]'.encode()), "cursor"),
        ("cursor=" + cursor_of(f'["9999-12-31T23:59:59-01:00", "{SOME_ID}"]'.encode()), "cursor"),
        ("cursor=" + cursor_of(b'["2026-01-01T00:00:00+00:00", "' + b"x" * 36 + b'"]'), "cursor"),
        ("cursor=" + cursor_of(b'["2026-01-01T00:00:00+00:00", "\\u0000' + b"0" * 35 + b'"]'), "cursor"),
        ("cursor=" + cursor_of(b"[" * 5000 + b"]" * 5000), "cursor"),
        ("cursor=" + cursor_of(b"[" * 120 + b"]" * 120), "cursor"),  # deep, within the length cap
        ("cursor=" + "A" * 100_000, "cursor"),
        ("colour=red", "colour"),
    ],
)
def test_hostile_list_queries_are_400_naming_the_parameter(api: Api, query: str, name: str) -> None:
    response = api.get(f"/v1/jobs?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["fields"][0]["field"] == name


# --- bodies -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "field", "rule"),
    [
        ('{"prompt": "a fox \\ud800"}', "prompt", "unicode"),
        ('{"prompt": "p", "webhook_url": "https://example.com/\\udfff"}', "webhook_url", "unicode"),
        ('{"prompt": "p", "metadata": {"\\ud800key": 1}}', "metadata.\\ud800key", "unicode"),
        ('{"prompt": "p", "metadata": {"a": ["ok", "\\udc00"]}}', "metadata.a[1]", "unicode"),
        ('{"prompt": "p", "\\ud83d": 1}', "\\ud83d", "unicode"),
        ('{"prompt": "p", "metadata": {"k\\u0000": 1}}', "metadata.k\\x00", "nul"),
        ('{"prompt": "p\\u0000"}', "prompt", "nul"),
        ('{"prompt": "p", "metadata": {"deep": ' + "[" * 450 + "]" * 450 + "}}", "metadata.deep", "depth"),
        ('{"prompt": "p", "image": ' + "[" * 40 + "]" * 40 + "}", "image", "depth"),
        ('{"prompt": "p", "metadata": {"x": [1e999]}}', "metadata.x[0]", "number"),
        ('{"prompt": "p", "image_fidelity": -1e400}', "image_fidelity", "number"),
    ],
)
def test_unstorable_bodies_are_400_naming_the_field(api: Api, raw: str, field: str, rule: str) -> None:
    response = post_raw(api, raw.encode())
    assert response.status_code == 400, response.get_data(as_text=True)
    ((named, found),) = fields_of(response)
    assert found == rule and named.startswith(field)
    assert written(api) == (0, 0)


@pytest.mark.parametrize("raw", [b"[]", b'"a job"', b"1", b"null", b"true", b"NaN", b'{"prompt": NaN}'])
def test_bodies_that_are_not_an_object_are_400(api: Api, raw: bytes) -> None:
    response = post_raw(api, raw)
    assert response.status_code == 400
    assert fields_of(response)[0][0] == "(body)"
    assert written(api) == (0, 0)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"],
)
def test_a_body_that_is_not_declared_json_is_415(api: Api, content_type: str | None) -> None:
    response = post_raw(api, json.dumps(BODY).encode(), content_type)
    assert response.status_code == 415
    assert fields_of(response) == [("Content-Type", "media_type")]
    assert written(api) == (0, 0)
    # The same body declared as JSON (with parameters, or a +json type) is taken.
    assert post_raw(api, json.dumps(BODY).encode(), "application/json; charset=utf-8").status_code == 202
    assert post_raw(api, json.dumps(BODY).encode(), "application/merge-patch+json").status_code == 202


def test_urls_over_their_caps_are_422_naming_the_field(api: Api) -> None:
    long_hook = "https://example.com/" + "h" * MAX_WEBHOOK_URL
    long_image = "https://example.com/" + "i" * MAX_PARAM_URL
    response = api.create({**BODY, "webhook_url": long_hook, "image": long_image})
    assert response.status_code == 422
    found = fields_of(response)
    assert ("webhook_url", "max_length") in found and ("image", "max_length") in found
    assert written(api) == (0, 0)
    at_cap = "https://example.com/" + "h" * (MAX_WEBHOOK_URL - len("https://example.com/"))
    assert api.create({**BODY, "webhook_url": at_cap}).status_code == 202


def test_idempotency_key_misuse_is_4xx_naming_the_header(api: Api) -> None:
    too_long = api.create(BODY, **{"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400
    assert fields_of(too_long) == [("Idempotency-Key", "length")]
    blank = api.create(BODY, **{"Idempotency-Key": "   "})
    assert blank.status_code == 400 and fields_of(blank) == [("Idempotency-Key", "length")]
    assert written(api) == (0, 0)

    first = api.create(BODY, **{"Idempotency-Key": "k" * 255})
    same = api.create(dict(reversed(BODY.items())), **{"Idempotency-Key": "k" * 255})
    other = api.create({**BODY, "webhook_url": "https://example.com/h"}, **{"Idempotency-Key": "k" * 255})
    assert (first.status_code, same.status_code, other.status_code) == (202, 200, 422)
    assert same.get_json()["id"] == first.get_json()["id"]
    assert fields_of(other) == [("Idempotency-Key", "reused")]
    assert written(api) == (1, 1)


# --- odd job ids --------------------------------------------------------------------------------
ODD_IDS = [
    "x" * 10_000,
    "%00",
    "a%00b",
    SOME_ID[:-1] + "%00",
    "%ED%A0%80" + SOME_ID[3:],  # a lone surrogate's UTF-8 bytes
    "..%2F..%2Fetc",
    SOME_ID.upper(),
    "{" + SOME_ID[:34] + "}",
    "%F0%9F%A6%8A" * 9,
]


@pytest.mark.parametrize("job_id", ODD_IDS)
def test_odd_job_ids_are_404(api: Api, job_id: str) -> None:
    for url in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/images/0"):
        response = api.get(url)
        assert response.status_code == 404, (url, response.get_data(as_text=True))
        assert "error" in response.get_json()


@pytest.mark.parametrize("index", [str(2**31), str(2**70), "9" * 5000])
def test_huge_image_indexes_are_4xx(api: Api, index: str) -> None:
    job_id = api.create(BODY).get_json()["id"]
    response = api.get(f"/v1/jobs/{job_id}/images/{index}")
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)


# --- the pure checks ----------------------------------------------------------------------------
def test_unstorable_names_the_first_bad_value_by_its_path() -> None:
    problem = unstorable({"a": {"b": [1, "ok", {"c": "x\x00"}]}})
    assert problem is not None and (problem.field, problem.rule) == ("a.b[2].c", "nul")
    assert unstorable({"a": ["fine", {"b": 1.5, "c": None}]}) is None
    deep: Any = "leaf"
    for _ in range(33):
        deep = [deep]
    problem = unstorable({"d": deep})
    assert problem is not None and problem.rule == "depth"
    shown = unstorable({"k" * 1000 + "\ud800": 1})
    assert shown is not None and len(shown.field) < 100 and shown.field.encode("utf-8")


def test_long_urls_finds_urls_at_any_depth() -> None:
    url = "https://cdn.example.com/" + "x" * MAX_PARAM_URL
    found = long_urls(
        {"image": url, "image_list": [{"image": url}, {"image": "https://ok/"}], "prompt": url[8:]}
    )
    assert [(e.field, e.rule) for e in found] == [
        ("image", "max_length"),
        ("image_list[0].image", "max_length"),
    ]
