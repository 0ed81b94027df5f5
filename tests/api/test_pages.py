"""Pages never carry image bytes (issue 16): the job list at any `limit`, the dashboard's JSON and
the downstream event read `params` without the inline base64 image, on PostgreSQL and SQLite.

The proof is the SQL itself: every statement that reads `jobs` is recorded as sent and run again,
and no row it returns may hold the image (a ~9.8 MiB string), whatever the response shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, sessionmaker

from models.documents import event_job, event_job_document
from models.enums import JobStatus
from models.shown_params import LIST_MARKER
from models.statemachine import create_job, transition
from models.tables import Job
from tests.api.conftest import AUTH, build_app
from tests.api.conftest import make_settings as api_settings
from webhook.db import set_publisher

IMAGE_CHARS = 9_800 * 1024  # ~9.8 MiB of base64 text, as in the measurement
# A row of a page is a few KiB; anything near the image's size means the image was read.
ROW_LIMIT = 64 * 1024


@dataclass
class Backend:
    """The app on one backend, on one connection rolled back after the test."""

    connection: Connection
    session: Session
    client: Any

    @contextmanager
    def reads_of_jobs(self) -> Iterator[list[tuple[str, Any]]]:
        """Every statement sent on the connection meanwhile that reads the jobs table, as sent."""
        statements: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            if not many and "FROM jobs" in statement:
                statements.append((statement, parameters))

        event.listen(self.connection, "after_cursor_execute", record)
        try:
            yield statements
        finally:
            event.remove(self.connection, "after_cursor_execute", record)

    def largest_row(self, statements: list[tuple[str, Any]]) -> int:
        """The biggest row (its values' text length summed) any of the statements returns."""
        assert statements, "no statement read the jobs table"
        largest = 0
        for statement, parameters in statements:
            for row in self.connection.exec_driver_sql(statement, parameters).all():
                largest = max(largest, sum(len(str(value)) for value in row))
        return largest


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, s3_client: Any) -> Iterator[Backend]:
    engine = request.getfixturevalue("db_engine" if request.param == "postgresql" else "sqlite_engine")
    with engine.connect() as connection:
        outer = connection.begin()
        factory = sessionmaker(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        app, _ = build_app(api_settings(), factory, s3_client)
        set_publisher(app, lambda name, args: None)
        env = Backend(connection, factory(), app.test_client())
        try:
            yield env
        finally:
            env.session.close()
            outer.rollback()


def big_jobs(session: Session, count: int) -> list[str]:
    """`count` jobs, each with its own ~9.8 MiB inline image."""
    ids = []
    for i in range(count):
        image = chr(ord("A") + i) * IMAGE_CHARS
        params = {"prompt": f"restyle {i}", "image": image, "model_name": "kling-v1"}
        job = create_job(session, params, provider="kling", webhook_url="https://example.com/h").job
        ids.append(job.id)
    session.commit()
    return ids


@pytest.mark.parametrize("url", ["/v1/jobs?limit=3", "/v1/jobs?limit=200", "/v1/jobs", "/v1/dashboard"])
def test_pages_never_read_inline_images(backend: Backend, url: str) -> None:
    ids = big_jobs(backend.session, 3)
    with backend.reads_of_jobs() as statements:
        response = backend.client.get(url, headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    jobs = {job["id"]: job for job in response.get_json()["jobs"]}
    assert set(jobs) == set(ids)
    # The size is shown instead of the bytes.
    assert {job["params"]["image"] for job in jobs.values()} == {f"<base64 image, {IMAGE_CHARS} characters>"}
    assert len(response.get_data()) < 3 * ROW_LIMIT
    assert backend.largest_row(statements) < ROW_LIMIT


def test_one_job_never_reads_its_inline_image(backend: Backend) -> None:
    (job_id,) = big_jobs(backend.session, 1)
    with backend.reads_of_jobs() as statements:
        response = backend.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200
    assert response.get_json()["params"]["image"] == f"<base64 image, {IMAGE_CHARS} characters>"
    assert backend.largest_row(statements) < ROW_LIMIT


def test_image_urls_and_other_fields_are_read_as_stored(backend: Backend) -> None:
    params = {"prompt": "restyle", "image": "https://example.com/a.png", "n": 2}
    job_id = create_job(backend.session, params, provider="kling").job.id
    backend.session.commit()
    response = backend.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert response.get_json()["params"] == params


def test_the_downstream_event_never_reads_params(backend: Backend) -> None:
    (job_id,) = big_jobs(backend.session, 1)
    job = backend.session.get(Job, job_id)
    assert job is not None
    transition(backend.session, job, JobStatus.FAILED, source="worker", error_code="1301", error_message="x")
    backend.session.commit()
    backend.session.expunge_all()  # as in the worker: a fresh session, nothing loaded yet

    with backend.reads_of_jobs() as statements:
        loaded = event_job(backend.session, job_id)
        assert loaded is not None
        document = event_job_document(loaded)
    assert document["id"] == job_id and document["status"] == "failed"
    assert backend.largest_row(statements) < ROW_LIMIT
    with pytest.raises(InvalidRequestError):
        _ = loaded.params  # never loaded behind the caller's back either


URL = "https://example.com/a.png"
# Every other kind's image fields: a top-level inline image, and a list of them.
OTHER_KINDS = [
    ("try_on", lambda big: {"human_image": big, "cloth_image": URL}, "human_image"),
    ("image_to_video", lambda big: {"image": URL, "image_tail": big}, "image_tail"),
    (
        "multi_image",
        lambda big: {"prompt": "p", "subject_image_list": [{"subject_image": big}]},
        "subject_image_list",
    ),
]


@pytest.mark.parametrize(("kind", "make", "field"), OTHER_KINDS, ids=[k for k, _, _ in OTHER_KINDS])
def test_pages_never_read_inline_images_of_other_kinds(
    backend: Backend, kind: str, make: Any, field: str
) -> None:
    params = make("Q" * IMAGE_CHARS)
    job_id = create_job(backend.session, params, provider="kling", kind=kind).job.id
    backend.session.commit()
    with backend.reads_of_jobs() as statements:
        listed = backend.client.get("/v1/jobs", headers=AUTH)
        one = backend.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    (doc,) = listed.get_json()["jobs"]
    assert doc == one.get_json()
    expected = LIST_MARKER if field.endswith("_list") else f"<base64 image, {IMAGE_CHARS} characters>"
    # Only the inline image is replaced: URLs and other fields are shown as stored.
    assert doc["params"] == {**params, field: expected}
    assert backend.largest_row(statements) < ROW_LIMIT
