"""One job document (`models.documents`): the API, the dashboard and the OpenAPI schema agree on its
fields, and every timestamp is ISO 8601 in UTC with its offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, text

from models.base import utcnow
from models.documents import IMAGE_FIELDS, JOB_FIELDS, NOTIFICATION_FIELDS, TRANSITION_FIELDS, iso_utc
from models.tables import Image, Job, Notification, Transition
from tests.api.conftest import Api, archive_job
from webhook.openapi import openapi_document

BODY = {"prompt": "a red fox in the snow", "n": 1, "webhook_url": "https://example.com/hook"}


def schema_fields(name: str) -> tuple[str, ...]:
    schema = openapi_document()["components"]["schemas"][name]
    assert schema["required"] == list(schema["properties"])
    return tuple(schema["properties"])


def archived_job_with_a_retry_pending(api: Api, s3_client: Any, s3_bucket: str) -> str:
    job_id: str = api.create(BODY).get_json()["id"]
    job = api.session.get(Job, job_id)
    assert job is not None
    archive_job(api.session, job, s3_client, s3_bucket, [(255, 0, 0)])
    api.session.add(
        Notification(
            job_id=job_id,
            event="job.archived",
            attempts=1,
            last_status=503,
            last_error="HTTP 503",
            next_attempt_at=utcnow() + timedelta(seconds=30),
        )
    )
    api.session.commit()
    return job_id


def test_documents_have_exactly_the_schema_fields(api: Api, s3_client: Any, s3_bucket: str) -> None:
    job_id = archived_job_with_a_retry_pending(api, s3_client, s3_bucket)
    shown = api.get(f"/v1/jobs/{job_id}").get_json()

    assert tuple(shown) == JOB_FIELDS == schema_fields("Job")
    assert {tuple(t) for t in shown["transitions"]} == {TRANSITION_FIELDS}
    assert schema_fields("Transition") == TRANSITION_FIELDS
    assert [tuple(i) for i in shown["images"]] == [IMAGE_FIELDS]
    assert schema_fields("Image") == IMAGE_FIELDS
    assert [tuple(n) for n in shown["notifications"]] == [NOTIFICATION_FIELDS]
    assert schema_fields("Notification") == NOTIFICATION_FIELDS


def test_list_and_dashboard_show_the_same_document(api: Api, s3_client: Any, s3_bucket: str) -> None:
    job_id = archived_job_with_a_retry_pending(api, s3_client, s3_bucket)
    shown = api.get(f"/v1/jobs/{job_id}").get_json()

    (listed,) = api.get("/v1/jobs").get_json()["jobs"]
    dashboard = api.get("/v1/dashboard")
    assert dashboard.status_code == 200
    (on_dashboard,) = dashboard.get_json()["jobs"]
    assert listed == shown == on_dashboard


def test_every_timestamp_is_utc_with_its_offset(api: Api, s3_client: Any, s3_bucket: str) -> None:
    job_id = archived_job_with_a_retry_pending(api, s3_client, s3_bucket)
    shown = api.get(f"/v1/jobs/{job_id}").get_json()
    (image,) = shown["images"]
    (note,) = shown["notifications"]
    stamps = [
        shown["created_at"],
        shown["updated_at"],
        *(t["at"] for t in shown["transitions"]),
        image["archived_at"],
        note["created_at"],
        note["next_attempt_at"],
    ]
    for stamp in stamps:
        assert stamp.endswith("+00:00"), stamp
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)


def test_iso_utc_converts_other_zones_to_utc() -> None:
    at = datetime(2026, 12, 6, 7, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert iso_utc(at) == "2026-12-06T05:30:15.250000+00:00"
    assert iso_utc(at.astimezone(UTC)) == "2026-12-06T05:30:15.250000+00:00"
    assert iso_utc(None) is None


def test_transitions_and_outputs_show_their_rows_values_to_the_microsecond(
    api: Api, s3_client: Any, s3_bucket: str
) -> None:
    # On PostgreSQL they come folded into the job's row as JSON (models/document_rows.py).
    job_id = archived_job_with_a_retry_pending(api, s3_client, s3_bucket)
    (image,) = api.session.scalars(select(Image).where(Image.job_id == job_id))
    # A whole duration (JSON writes a float8 5.0 as 5), trailing zeros in the microseconds, and a
    # session time zone other than UTC.
    image.duration, image.archived_at = 5.0, datetime(2026, 12, 8, 1, 2, 3, 450000, tzinfo=UTC)
    api.session.add(Image(job_id=job_id, index=1, type="video", source_url="https://cdn.example/v.mp4"))
    api.session.commit()
    api.session.execute(text("SET LOCAL TimeZone = 'Asia/Kolkata'"))
    shown = api.get(f"/v1/jobs/{job_id}").get_json()

    rows = api.session.scalars(select(Transition).where(Transition.job_id == job_id).order_by(Transition.id))
    assert shown["transitions"] == [
        {"from": t.from_status, "to": t.to_status, "source": t.source, "at": iso_utc(t.at)} for t in rows
    ]
    outputs = api.session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index))
    assert shown["outputs"] == [
        {
            "type": o.type,
            "index": o.index,
            "status": o.status,
            "source_url": o.source_url,
            "s3_bucket": o.s3_bucket,
            "s3_key": o.s3_key,
            "sha256": o.sha256,
            "bytes": o.bytes,
            "content_type": o.content_type,
            "duration": o.duration,
            "archived_at": iso_utc(o.archived_at),
        }
        for o in outputs
    ]
    assert shown["outputs"][0]["archived_at"] == "2026-12-08T01:02:03.450000+00:00"
    assert isinstance(shown["outputs"][0]["duration"], float)
