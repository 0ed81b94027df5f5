"""The simulator checks Authorization the way Kling does (codes 1000-1004, HTTP 401)."""

from __future__ import annotations

import time

import jwt
import pytest

from kling import AuthorizationInvalid, ImageRequest, KlingClient
from kling.auth import jwt_token
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.simulator.helpers import get, post

PATH = "/v1/images/generations"


def token(**claims):
    now = int(time.time())
    payload = {"iss": TEST_ACCESS_KEY, "exp": now + 1800, "nbf": now - 5, **claims}
    return jwt.encode(payload, TEST_SECRET_KEY, algorithm="HS256")


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, 1001),
        ("", 1001),
        ("Bearer ", 1001),
        (f"Token {jwt_token(TEST_ACCESS_KEY, TEST_SECRET_KEY)}", 1002),
        (jwt_token(TEST_ACCESS_KEY, TEST_SECRET_KEY), 1002),
        ("Bearer not-a-jwt", 1002),
        (
            f"Bearer {jwt.encode({'iss': TEST_ACCESS_KEY}, 'another-secret-of-32-bytes-or-more!!', 'HS256')}",
            1002,
        ),
        # Times relative to when the test runs, not to collection (a long suite outlasts them).
        (lambda: f"Bearer {token(nbf=int(time.time()) + 600)}", 1003),
        (lambda: f"Bearer {token(exp=int(time.time()) - 10)}", 1004),
        (f"Bearer {token(iss='someone-else')}", 1000),
    ],
    ids=[
        "missing",
        "empty",
        "bearer-empty",
        "no-bearer-scheme",
        "no-bearer",
        "malformed",
        "bad-signature",
        "nbf-future",
        "expired",
        "unknown-iss",
    ],
)
def test_auth_error_codes(simulator, authorization, code):
    if callable(authorization):
        authorization = authorization()
    headers = {} if authorization is None else {"Authorization": authorization}
    for resp in (
        get(simulator, PATH, headers=headers),
        post(simulator, PATH, {"prompt": "x"}, headers=headers),
    ):
        assert resp.status_code == 401
        body = resp.json()
        assert body["code"] == code
        assert body["data"] is None and body["request_id"]
    assert simulator.create_count == 0
    assert simulator.count_by_code[code] == 2


def test_valid_jwt_is_accepted(simulator):
    resp = get(simulator, PATH)
    assert resp.status_code == 200
    assert resp.json()["code"] == 0


def test_static_api_key(simulator_factory):
    sim = simulator_factory(access_key=None, secret_key=None, api_key="static-api-key-0123456789-abcdefgh")
    ok = get(sim, PATH, headers={"Authorization": "Bearer static-api-key-0123456789-abcdefgh"})
    assert ok.status_code == 200 and ok.json()["code"] == 0
    wrong = get(sim, PATH, headers={"Authorization": "Bearer static-api-key-WRONG"})
    assert wrong.status_code == 401 and wrong.json()["code"] == 1002
    # With no access key configured, any JWT has an unknown issuer.
    jwt_answer = get(sim, PATH)
    assert jwt_answer.status_code == 401 and jwt_answer.json()["code"] == 1000
    with KlingClient(api_key="static-api-key-0123456789-abcdefgh", base_url=sim.base_url) as c:
        assert c.create_image(ImageRequest(prompt="a cat")).task_id


def test_client_with_wrong_secret_gets_typed_error(simulator):
    c = KlingClient(
        access_key=TEST_ACCESS_KEY,
        secret_key="wrong-secret-key-0123456789-abcdefghij",
        base_url=simulator.base_url,
    )
    with c, pytest.raises(AuthorizationInvalid) as info:
        c.list_images()
    assert info.value.code == 1002 and info.value.http_status == 401
