"""A hypothesis fuzz of `/v1/jobs` on the real app and PostgreSQL (issue 16): hostile bodies (lone
surrogates, NUL, deep nesting, huge numbers, wrong types, raw bytes), content types, Idempotency-Keys,
list parameters and job ids. Never a 5xx (503 is an outage, and the database is up here); a 4xx
always has a JSON error and writes nothing.

tests/api/test_openapi.py fuzzes the same routes from the OpenAPI document (schema-shaped input).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models.tables import Job, Outbox
from tests.api.conftest import AUTH, Api

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # CI must not pass or fail by the luck of the draw
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE_TEXT = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "[/]",
    "\x1b[2J",
    "\u00b2",
    "\u0661",
    "-1",
    "1e999",
    "9" * 400,
    "http://2130706433:9/",
    "https://example.com/" + "x" * 9000,
    "https://example.com/hook",
    "0001-01-01T00:00:00+01:00",
]
FIELDS = [
    "prompt",
    "negative_prompt",
    "n",
    "aspect_ratio",
    "image",
    "image_reference",
    "image_fidelity",
    "human_fidelity",
    "resolution",
    "model_name",
    "provider",
    "webhook_url",
    "metadata",
    "callback_url",
    "external_task_id",
]

text = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=20), st.sampled_from(HOSTILE_TEXT)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)
# Values PostgreSQL refuses, drawn often where they would reach it.
unstorable = st.sampled_from([float("inf"), float("-inf"), "\ud800", "x\x00"])
bodies = st.one_of(
    # Valid but for what is fuzzed, so the fuzz reaches the database too.
    st.fixed_dictionaries(
        {"prompt": st.just("a fox"), "metadata": st.dictionaries(text, unstorable | values, max_size=3)},
        optional={"n": st.integers(1, 3)},
    ),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), text), values, max_size=6),
    st.fixed_dictionaries({"prompt": text}, optional={k: values for k in FIELDS[1:]}),
    values,
)


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    """A body as sent: JSON (surrogates passed through as the sender wrote them), possibly wrapped in
    deep nesting, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    body = draw(bodies)
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):  # infinity as a number that parses to it, not the JSON-invalid constant
        raw = raw.replace(b"-Infinity", b"-1e999").replace(b"Infinity", b"1e999")
    depth = draw(st.sampled_from([0, 0, 0, 40, 600]))
    if depth and isinstance(body, dict):
        raw = raw[:-1] + (b", " if body else b"") + b'"deep": ' + b"[" * depth + b"]" * depth + b"}"
    return raw


content_types = st.sampled_from(
    ["application/json", "application/json", "application/json; charset=utf-8", "text/plain", None]
)
keys = st.one_of(
    st.none(), st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300)
)


def written(api: Api) -> tuple[int, int]:
    jobs = api.session.scalar(select(func.count()).select_from(Job)) or 0
    return jobs, api.session.scalar(select(func.count()).select_from(Outbox)) or 0


def check(response: Any, before: tuple[int, int], api: Api) -> None:
    status = response.status_code
    assert status < 500, response.get_data(as_text=True)
    if status >= 400:
        body = response.get_json()
        assert isinstance(body, dict) and body.get("error"), response.get_data(as_text=True)
        assert written(api) == before


@FUZZ
@given(raw=encoded(), content_type=content_types, key=keys)
# The issue's reproductions, always tried first.
@example(
    raw=b'{"prompt": "p", "webhook_url": "https://example.com/\\ud800"}',
    content_type="application/json",
    key=None,
)
@example(
    raw=b'{"prompt": "p", "metadata": ' + b"[" * 450 + b"]" * 450 + b"}",
    content_type="application/json",
    key=None,
)
@example(raw=b'{"prompt": "p"}', content_type="application/json", key="k" * 256)
@example(raw=b'{"prompt": "p", "metadata": {"x": 1e999}}', content_type="application/json", key=None)
def test_create_never_fails_with_a_5xx(
    api: Api, raw: bytes, content_type: str | None, key: str | None
) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers["Idempotency-Key"] = key
    before = written(api)
    response = api.client.post("/v1/jobs", data=raw, headers=headers)
    check(response, before, api)
    if response.status_code in (400, 415, 422):
        assert response.get_json().get("fields"), response.get_json()  # the field is named


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Cursor times across the whole calendar with offsets either side of UTC: year 1 east of UTC and
# year 9999 west of it overflow when converted.
times = st.builds(
    lambda at, offset: at.isoformat() + offset,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
    st.sampled_from(["+00:00", "+01:00", "-01:00", "+14:00", "-12:00", ""]),
)
cursors = st.one_of(
    text,
    st.tuples(times, st.one_of(st.uuids().map(str), text)).map(lambda t: b64(json.dumps(t).encode())),
    values.map(lambda v: b64(json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))),
)
limits = st.one_of(
    st.sampled_from(["\u00b2", "\u0661", "\uff11", "-1", "0", "201", "1e2", " 1", "0x1", "9" * 30]),
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    text,
)
queries = st.fixed_dictionaries(
    {}, optional={"status": text, "limit": limits, "cursor": cursors, "colour": text}
)


ISSUE_CURSOR = b64(b'["0001-01-01T00:00:00+01:00", "00000000-0000-4000-8000-000000000000"]')


@FUZZ
@given(query=queries, job_id=text, index=st.integers(min_value=-(2**80), max_value=2**80))
# The issue's reproductions, always tried first.
@example(query={"limit": "\u00b2", "cursor": ISSUE_CURSOR}, job_id="\x00" * 36, index=2**40)
def test_reads_never_fail_with_a_5xx(api: Api, query: dict[str, str], job_id: str, index: int) -> None:
    before = written(api)
    # Each parameter alone too: the first bad one answers, and must not hide the others' bugs.
    for one in [query, *({name: value} for name, value in query.items())]:
        qs = "&".join(f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in one.items())
        check(api.client.get(f"/v1/jobs?{qs}", headers=AUTH), before, api)
    path = quote(job_id.encode("utf-8", "surrogatepass"), safe="")
    check(api.client.get(f"/v1/jobs/{path}", headers=AUTH), before, api)
    check(api.client.get(f"/v1/jobs/{path}/images/{index}", headers=AUTH), before, api)
