"""The job HTTP API against the real PostgreSQL (rolled back per test) and the moto S3 endpoint."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import func, select

from models import statemachine
from models.enums import JobStatus
from models.tables import Job, Outbox
from tests.api.conftest import AUTH, Api, archive_job, make_settings, png_bytes
from tests.conftest import TEST_API_TOKEN
from webhook import create_app
from webhook.api import ConfigurationError
from webhook.db import set_publisher

BODY = {"prompt": "a red fox in the snow", "n": 2, "aspect_ratio": "16:9"}


def count(api: Api, model: Any) -> int:
    return api.session.scalar(select(func.count()).select_from(model)) or 0


# --- auth and startup ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TEST_API_TOKEN}"}],
    ids=["missing", "wrong", "not-bearer"],
)
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/00000000-0000-4000-8000-000000000000"),
        ("get", "/v1/jobs/00000000-0000-4000-8000-000000000000/images/0"),
        ("get", "/v1/dashboard"),
        ("post", "/v1/jobs/00000000-0000-4000-8000-000000000000/cancel"),
        ("post", "/v1/jobs/00000000-0000-4000-8000-000000000000/retry"),
        ("get", "/v1/jobs/00000000-0000-4000-8000-000000000000/deliveries"),
        ("post", "/v1/jobs/00000000-0000-4000-8000-000000000000/deliveries/job.failed/replay"),
    ],
)
def test_every_api_route_needs_the_token(api: Api, headers: dict[str, str], method: str, url: str) -> None:
    response = getattr(api.client, method)(url, headers=headers, json=BODY if method == "post" else None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.get_json()
    assert count(api, Job) == 0


def test_app_refuses_to_start_without_api_token() -> None:
    with pytest.raises(ConfigurationError, match="API_TOKEN is not set"):
        create_app(make_settings(api_token=None))


def test_demo_mode_without_token_opens_the_api_to_localhost_only(api: Api) -> None:
    app = create_app(
        make_settings(api_token=None, demo_mode=True), session_factory=api.app.extensions["kling.sessions"]
    )
    set_publisher(app, None)
    client = app.test_client()
    assert client.get("/v1/jobs").status_code == 200
    remote = client.get("/v1/jobs", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 401


# --- create -------------------------------------------------------------------------------------
def test_create_writes_job_transition_and_outbox_then_publishes_after_commit(api: Api) -> None:
    response = api.create({**BODY, "metadata": {"order": 42}, "webhook_url": "https://example.com/hook"})
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["provider"] == "kling"
    assert job["external_task_id"] == job["id"]
    assert job["params"] == BODY
    assert job["metadata"] == {"order": 42}
    assert job["webhook_url"] == "https://example.com/hook"
    assert job["error"] is None
    assert [(t["from"], t["to"], t["source"]) for t in job["transitions"]] == [(None, "queued", "api")]
    row = api.session.get(Job, job["id"])
    assert row is not None and row.slots == 2
    # Published once the transaction committed, and marked dispatched.
    assert api.published == [("submit_job", [job["id"]])]
    outbox = api.session.scalars(select(Outbox)).all()
    assert len(outbox) == 1 and outbox[0].dispatched_at is not None


def test_with_one_account_a_create_deep_in_the_queue_sends_no_first_submit(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(statemachine, "QUEUE_DEPTH_FOR_PUMP", 2)
    one = {**BODY, "n": 1}
    ids = [api.create(one).get_json()["id"] for _ in range(3)]
    assert api.published == [("submit_job", [ids[0]]), ("submit_job", [ids[1]])]
    assert api.session.get(Job, ids[2]).status == "queued"  # type: ignore[union-attr]
    # With several accounts every job keeps its first submit: the pump reads the queue's head
    # only, and a job behind a head no account can take now reaches its account through its
    # place in that account's wait queue.
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[[account]]\nname = "a"\naccess_key = "ak"\nsecret_key = "sk-0123456789abcdef0123456789"\n'
        'concurrency = 3\n\n[[account]]\nname = "b"\naccess_key = "ak2"\n'
        'secret_key = "sk-0123456789abcdef0123456789x"\nconcurrency = 2\n'
    )
    app = create_app(
        make_settings(kling_accounts_file=str(path)), session_factory=api.app.extensions["kling.sessions"]
    )
    published: list[tuple[str, list[Any]]] = []
    set_publisher(app, lambda name, args: published.append((name, args)))
    answer = app.test_client().post("/v1/jobs", json=one, headers=AUTH)
    assert answer.status_code == 202
    assert published == [("submit_job", [answer.get_json()["id"]])]


def test_broker_outage_keeps_the_outbox_row_and_the_request_succeeds(api: Api) -> None:
    def broken(name: str, args: list[Any]) -> None:
        raise ConnectionError("broker down")

    set_publisher(api.app, broken)
    response = api.create(BODY)
    assert response.status_code == 202
    outbox = api.session.scalars(select(Outbox)).all()
    assert [(o.task, o.args, o.dispatched_at) for o in outbox] == [
        ("submit_job", [response.get_json()["id"]], None)
    ]


def test_idempotency_key_returns_the_same_job(api: Api) -> None:
    first = api.create(BODY, **{"Idempotency-Key": "order-42"})
    again = api.create(BODY, **{"Idempotency-Key": "order-42"})
    other = api.create(BODY, **{"Idempotency-Key": "order-43"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert other.status_code == 202 and other.get_json()["id"] != first.get_json()["id"]
    assert count(api, Job) == 2
    assert count(api, Outbox) == 2


def test_idempotency_key_reused_with_another_body_is_422_and_changes_nothing(api: Api) -> None:
    first = api.create(BODY, **{"Idempotency-Key": "order-42"})
    for changed in ({**BODY, "prompt": "something else"}, {**BODY, "metadata": {"k": 1}}, {**BODY, "n": 1}):
        again = api.create(changed, **{"Idempotency-Key": "order-42"})
        assert again.status_code == 422
        assert [e["field"] for e in again.get_json()["fields"]] == ["Idempotency-Key"]
    assert api.get(f"/v1/jobs/{first.get_json()['id']}").get_json()["params"] == BODY
    assert count(api, Job) == 1 and count(api, Outbox) == 1


@pytest.mark.parametrize(
    "query",
    [
        "limit=\u00b2",  # "²": str.isdigit() says yes, int() says no
        "limit=\u0661",  # Arabic-Indic one: int() takes it, a limit must be ASCII
        "limit=" + "9" * 40,
        # A cursor from the year 1, east of UTC: valid ISO 8601 that overflows in UTC.
        "cursor="
        + base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+01:00", "00000000-0000-0000-0000-000000000000"]')
        .decode()
        .rstrip("="),
    ],
)
def test_hostile_list_parameters_are_400(api: Api, query: str) -> None:
    response = api.get("/v1/jobs?" + query)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["fields"][0]["field"] in ("limit", "cursor")


def _post_raw(api: Api, raw: str) -> Any:
    headers = {**AUTH, "content-type": "application/json"}
    return api.client.post("/v1/jobs", data=raw.encode("utf-8", "surrogatepass"), headers=headers)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ('{"prompt": "p", "metadata": {"a": "x\\u0000y"}}', "NUL"),
        ('{"prompt": "p", "webhook_url": "https://example.com/\\ud800"}', "surrogate"),
        ('{"prompt": "p", "metadata": {"deep": ' + "[" * 450 + "]" * 450 + "}}", "nest"),
    ],
)
def test_unstorable_bodies_are_400_and_write_nothing(api: Api, raw: str, says: str) -> None:
    response = _post_raw(api, raw)
    assert response.status_code == 400 and says in response.get_json()["error"]
    assert count(api, Job) == 0


def test_validation_names_every_bad_field_and_writes_nothing(api: Api) -> None:
    response = api.create(
        {
            "prompt": "",
            "n": 12,
            "aspect_ratio": "5:4",
            "model_name": "kling-v1",
            "resolution": "2k",
            "provider": "midjourney",
            "webhook_url": "ftp://example.com/x",
            "metadata": [1, 2],
            "callback_url": "https://evil.example.com",
            "colour": "red",
        }
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "invalid request"
    found = {(f["field"], f["rule"]) for f in body["fields"]}
    assert found >= {
        ("prompt", "required"),
        ("n", "range"),
        ("aspect_ratio", "enum"),
        ("resolution", "model_support"),
        ("provider", "enum"),
        ("webhook_url", "url"),
        ("metadata", "type"),
        ("callback_url", "reserved"),
        ("colour", "unknown_field"),
    }
    assert all(f["message"] for f in body["fields"])
    assert count(api, Job) == 0 and count(api, Outbox) == 0 and api.published == []


def test_provider_rules_follow_the_chosen_provider(api: Api) -> None:
    # 21:9 and model_name exist on the official API only; the gateway also caps the prompt at 500.
    body = {"prompt": "x" * 600, "aspect_ratio": "21:9", "model_name": "kling-v2", "provider": "appypie"}
    response = api.create(body)
    assert response.status_code == 422
    assert {f["field"] for f in response.get_json()["fields"]} == {"prompt", "aspect_ratio", "model_name"}
    ok = api.create({"prompt": "fine", "aspect_ratio": "1:1", "provider": "appypie"})
    assert ok.status_code == 202 and ok.get_json()["provider"] == "appypie"


def test_n_above_the_account_concurrency_is_refused(api: Api) -> None:
    # The test settings have KLING_CONCURRENCY=5: a 6-image task could never get its slots.
    response = api.create({"prompt": "six foxes", "n": 6})
    assert response.status_code == 422
    (field,) = response.get_json()["fields"]
    assert (field["field"], field["rule"]) == ("n", "concurrency")
    assert api.create({"prompt": "five foxes", "n": 5}).status_code == 202


@pytest.mark.parametrize(
    ("data", "message", "rule"),
    [
        (b"{not json", "malformed JSON body", "json"),
        (b"[1, 2]", "the body must be a JSON object", "type"),
        (b"", "malformed JSON body", "json"),
    ],
)
def test_malformed_bodies_get_400(api: Api, data: bytes, message: str, rule: str) -> None:
    response = api.client.post("/v1/jobs", data=data, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == message
    assert [(f["field"], f["rule"]) for f in body["fields"]] == [("(body)", rule)]
    assert count(api, Job) == 0


def test_base64_image_is_stored_but_never_echoed(api: Api) -> None:
    image = base64.b64encode(png_bytes((10, 200, 30))).decode()
    response = api.create({"prompt": "restyle", "image": image, "model_name": "kling-v1"})
    assert response.status_code == 202, response.get_json()
    shown = response.get_json()["params"]["image"]
    assert shown == f"<base64 image, {len(image)} characters>"
    assert image not in response.get_data(as_text=True)
    assert api.session.get(Job, response.get_json()["id"]).params["image"] == image  # type: ignore[union-attr]
    url_image = api.create({"prompt": "p", "image": "https://example.com/a.png"})
    assert url_image.get_json()["params"]["image"] == "https://example.com/a.png"


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433:9/",
        "http://0x7f.1:9/",
        "http://127.1/",
        "http://[::ffff:169.254.169.254]/latest",
        "http://[64:ff9b::a00:1]/",
        "http://0.0.0.0:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "https://localhost/hook",
        "https://db.internal/hook",
    ],
)
def test_webhook_url_to_a_private_host_is_422_in_any_spelling(api: Api, url: str) -> None:
    response = api.create({**BODY, "webhook_url": url})
    assert response.status_code == 422
    assert [(f["field"], f["rule"]) for f in response.get_json()["fields"]] == [("webhook_url", "public")]
    assert count(api, Job) == 0


def test_webhook_url_public_or_listed_is_accepted(api: Api) -> None:
    assert api.create({**BODY, "webhook_url": "https://hooks.example.com/done"}).status_code == 202
    assert api.create({**BODY, "webhook_url": "http://8.8.8.8/hook"}).status_code == 202
    api.app.extensions["kling.settings"] = make_settings(notify_allowed_hosts="consumer.internal")
    assert api.create({**BODY, "webhook_url": "https://consumer.internal/hook"}).status_code == 202


def test_metadata_over_16_kib_is_422(api: Api) -> None:
    response = api.create({**BODY, "metadata": {"blob": "x" * (16 * 1024)}})
    assert response.status_code == 422
    assert [(f["field"], f["rule"]) for f in response.get_json()["fields"]] == [("metadata", "size")]


def test_pages_read_inline_images_as_their_size_in_the_database(api: Api) -> None:
    """The image bytes stay in PostgreSQL: the row the documents are built from has the marker."""
    from models.documents import job_select

    image = base64.b64encode(png_bytes((10, 200, 30))).decode()
    job_id = api.create({"prompt": "restyle", "image": image, "model_name": "kling-v1"}).get_json()["id"]
    url_job = api.create({"prompt": "restyle", "image": "https://example.com/a.png"}).get_json()["id"]
    rows = {row.id: row.params for row in api.session.execute(job_select())}
    assert rows[job_id]["image"] == f"<base64 image, {len(image)} characters>"
    assert rows[job_id]["prompt"] == "restyle"
    assert rows[url_job]["image"] == "https://example.com/a.png"
    listed = api.get("/v1/jobs").get_json()["jobs"]
    assert {j["id"]: j["params"]["image"] for j in listed}[job_id] == rows[job_id]["image"]


def test_bad_idempotency_key_is_400(api: Api) -> None:
    response = api.create(BODY, **{"Idempotency-Key": "k" * 256})
    assert response.status_code == 400 and "Idempotency-Key" in response.get_json()["error"]


# --- read ---------------------------------------------------------------------------------------
def test_show_returns_transitions_images_and_notifications(api: Api, s3_client: Any, s3_bucket: str) -> None:
    from models.tables import Notification

    job_id = api.create({**BODY, "webhook_url": "https://example.com/hook"}).get_json()["id"]
    job = api.session.get(Job, job_id)
    assert job is not None
    archive_job(api.session, job, s3_client, s3_bucket, [(255, 0, 0), (0, 0, 255)])
    api.session.add(Notification(job_id=job_id, event="job.archived", attempts=1, last_status=200))
    api.session.commit()

    shown = api.get(f"/v1/jobs/{job_id}").get_json()
    assert shown["status"] == "archived"
    assert shown["provider_task_id"] == f"task-{job_id[:8]}"
    assert [t["to"] for t in shown["transitions"]] == ["queued", "submitted", "succeeded", "archived"]
    assert [(i["index"], i["status"], i["s3_bucket"]) for i in shown["images"]] == [
        (0, "archived", s3_bucket),
        (1, "archived", s3_bucket),
    ]
    assert all(len(i["sha256"]) == 64 and i["bytes"] > 0 for i in shown["images"])
    assert [(n["event"], n["attempts"], n["last_status"]) for n in shown["notifications"]] == [
        ("job.archived", 1, 200)
    ]


@pytest.mark.parametrize("job_id", ["00000000-0000-4000-8000-000000000000", "not-a-uuid", "x" * 300])
def test_unknown_job_is_404(api: Api, job_id: str) -> None:
    response = api.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 404
    assert response.get_json() == {"error": "unknown job"}


def test_list_is_newest_first_with_cursor_pagination_and_status_filter(api: Api) -> None:
    ids = [api.create({**BODY, "prompt": f"p{i}"}).get_json()["id"] for i in range(5)]
    failed = api.session.get(Job, ids[1])
    assert failed is not None
    from models.statemachine import transition

    transition(
        api.session, failed, JobStatus.FAILED, source="worker", error_code="1301", error_message="policy"
    )
    api.session.commit()
    # One transaction gives every row the same created_at on PostgreSQL: the id breaks the tie.
    expected = [j.id for j in api.session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id.desc()))]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url).get_json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == 3

    only_failed = api.get("/v1/jobs?status=failed").get_json()
    assert [j["id"] for j in only_failed["jobs"]] == [ids[1]]
    assert only_failed["jobs"][0]["error"] == {"code": "1301", "message": "policy"}
    assert only_failed["next_cursor"] is None


def test_list_gives_each_job_its_own_transitions_images_and_notifications(
    api: Api, s3_client: Any, s3_bucket: str
) -> None:
    from models.tables import Notification

    hooked = api.create({**BODY, "prompt": "hooked", "webhook_url": "https://example.com/hook"}).get_json()[
        "id"
    ]
    plain = api.create({**BODY, "prompt": "plain"}).get_json()["id"]
    job = api.session.get(Job, hooked)
    assert job is not None
    archive_job(api.session, job, s3_client, s3_bucket, [(255, 0, 0)])
    api.session.add(Notification(job_id=hooked, event="job.archived", attempts=2, last_status=500))
    api.session.commit()

    docs = {j["id"]: j for j in api.get("/v1/jobs").get_json()["jobs"]}
    assert [t["to"] for t in docs[hooked]["transitions"]] == ["queued", "submitted", "succeeded", "archived"]
    assert [t["to"] for t in docs[plain]["transitions"]] == ["queued"]
    assert [i["index"] for i in docs[hooked]["images"]] == [0] and docs[plain]["images"] == []
    assert [(n["event"], n["attempts"]) for n in docs[hooked]["notifications"]] == [("job.archived", 2)]
    assert docs[plain]["notifications"] == []
    # A page is the same document as the single-job view.
    assert docs[hooked] == api.get(f"/v1/jobs/{hooked}").get_json()


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=WyJ4IiwgInkiXQ", "cursor"),
    ],
)
def test_bad_list_parameters_are_400_naming_the_parameter(api: Api, query: str, name: str) -> None:
    response = api.get(f"/v1/jobs?{query}")
    assert response.status_code == 400
    body = response.get_json()
    assert name in body["error"] and body["fields"][0]["field"] == name


def test_image_redirects_to_a_working_presigned_url_once_archived(
    api: Api, s3_client: Any, s3_bucket: str
) -> None:
    job_id = api.create(BODY).get_json()["id"]
    assert api.get(f"/v1/jobs/{job_id}/images/0").status_code == 404  # no image rows yet

    job = api.session.get(Job, job_id)
    assert job is not None
    archive_job(api.session, job, s3_client, s3_bucket, [(255, 0, 0)])
    response = api.get(f"/v1/jobs/{job_id}/images/0")
    assert response.status_code == 302
    fetched = requests.get(response.headers["Location"], timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == png_bytes((255, 0, 0))
    assert api.get(f"/v1/jobs/{job_id}/images/5").status_code == 404


def test_image_not_archived_yet_is_409(api: Api) -> None:
    from models.tables import Image

    job_id = api.create(BODY).get_json()["id"]
    api.session.add(Image(job_id=job_id, index=0, source_url="https://cdn.klingai.com/x.png"))
    api.session.commit()
    response = api.get(f"/v1/jobs/{job_id}/images/0")
    assert response.status_code == 409
    assert "not archived" in response.get_json()["error"]


def test_database_down_is_503_not_500(api: Api) -> None:
    settings = make_settings(
        database_url="postgresql://postgres@127.0.0.1:1/kling", api_token=SecretStr(TEST_API_TOKEN)
    )
    app = create_app(settings)
    response = app.test_client().get("/v1/jobs", headers=AUTH)
    assert response.status_code == 503
    assert response.get_json() == {"error": "database unavailable, retry later"}
