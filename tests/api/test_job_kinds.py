"""`kind` on `POST /v1/jobs`: each kind's rules from the registry (422 naming the field), its slot
weight stored as the job's slots, and the job document's `kind`, `outputs[]` and `failure_reason`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from kling.kinds import KIND_NAMES
from kling.types import Task
from models.documents import IMAGE_FIELDS, OUTPUT_FIELDS
from models.statemachine import apply_provider_task, transition
from models.tables import Image, Job
from tests.api.conftest import Api
from tests.kind_examples import URL, VALID
from tests.samples import load
from webhook.openapi import openapi_document

# One invalid body per kind and the field its 422 must name.
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("image", {"prompt": "a fox", "n": 12}, "n"),
    ("omni_image", {"prompt": "a fox", "result_type": "series", "series_amount": 12}, "series_amount"),
    ("expand", {"image": URL, "left_expansion_ratio": 3}, "left_expansion_ratio"),
    ("multi_image", {"prompt": "a fox"}, "subject_image_list"),
    ("try_on", {"human_image": URL}, "cloth_image"),
    ("text_to_video", {"prompt": "a fox runs", "duration": "7"}, "duration"),
    ("text_to_video", {"prompt": "a fox runs", "n": 2}, "n"),  # an image field on a video kind
    ("image_to_video", {"prompt": "it moves"}, "image"),
    ("omni_video", {"prompt": "a fox runs", "duration": 20}, "duration"),
]


def fields(response: Any) -> list[str]:
    return [f["field"] for f in response.get_json().get("fields", [])]


def jobs(api: Api) -> int:
    return api.session.scalar(select(func.count()).select_from(Job)) or 0


def test_the_examples_cover_every_kind() -> None:
    assert set(VALID) == set(KIND_NAMES)
    assert {kind for kind, _, _ in INVALID} == set(KIND_NAMES)


@pytest.mark.parametrize("kind", list(VALID))
def test_a_job_of_each_kind_is_stored_with_its_kind_and_slot_weight(api: Api, kind: str) -> None:
    body, slots = VALID[kind]
    response = api.create({**body, "kind": kind})

    assert response.status_code == 202, response.get_json()
    doc = response.get_json()
    assert doc["kind"] == kind and doc["outputs"] == [] and doc["images"] == []
    assert "kind" not in doc["params"]
    job = api.session.get(Job, doc["id"])
    assert job is not None and (job.kind, job.slots) == (kind, slots)


def test_no_kind_is_an_image_job_as_before(api: Api) -> None:
    response = api.create({"prompt": "a fox", "n": 2})
    assert response.status_code == 202
    job = api.session.get(Job, response.get_json()["id"])
    assert job is not None and (job.kind, job.slots) == ("image", 2)


@pytest.mark.parametrize(("kind", "body", "field"), INVALID)
def test_each_kinds_rules_answer_422_naming_the_field(
    api: Api, kind: str, body: dict[str, Any], field: str
) -> None:
    response = api.create({**body, "kind": kind})
    assert response.status_code == 422
    assert field in fields(response)
    assert jobs(api) == 0


@pytest.mark.parametrize("kind", ["video", "", 3, ["image"]])
def test_an_unknown_kind_answers_422_naming_kind(api: Api, kind: Any) -> None:
    response = api.create({"prompt": "a fox", "kind": kind})
    assert response.status_code == 422
    assert fields(response) == ["kind"]
    assert jobs(api) == 0


def test_a_kind_the_gateway_does_not_offer_names_kind(api: Api) -> None:
    response = api.create({"prompt": "a fox runs", "kind": "text_to_video", "provider": "appypie"})
    assert response.status_code == 422
    assert [(f["field"], f["rule"]) for f in response.get_json()["fields"]] == [("kind", "provider_support")]


def test_a_series_bigger_than_any_account_names_series_amount(api: Api) -> None:
    # `auto` may make 9 images: it holds 9 slots, more than the 5 these accounts have.
    response = api.create(
        {"prompt": "a fox", "kind": "omni_image", "result_type": "series", "series_amount": "auto"}
    )
    assert response.status_code == 422
    assert [(f["field"], f["rule"]) for f in response.get_json()["fields"]] == [
        ("series_amount", "concurrency")
    ]


def test_an_idempotency_key_reused_for_another_kind_is_refused(api: Api) -> None:
    first = api.create({"prompt": "a fox"}, **{"Idempotency-Key": "k-1"})
    again = api.create({"prompt": "a fox", "kind": "text_to_video"}, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 422
    assert fields(again) == ["Idempotency-Key"]


# --- documents ------------------------------------------------------------------------------------
def _succeeded(api: Api, kind: str, sample: str) -> str:
    task = Task.from_kling(load(sample)["data"])
    job_id: str = api.create({**VALID[kind][0], "kind": kind}).get_json()["id"]
    job = api.session.get(Job, job_id)
    assert job is not None
    transition(api.session, job, "submitted", source="worker", provider_task_id=task.task_id)
    apply_provider_task(api.session, job_id, task, source="poll")
    api.session.commit()
    return job_id


def test_a_video_jobs_document_shows_its_video_in_outputs_only(api: Api) -> None:
    sample = "kling/query-text_to_video-succeed-200"
    job_id = _succeeded(api, "text_to_video", sample)
    (video,) = load(sample)["data"]["task_result"]["videos"]

    doc = api.get(f"/v1/jobs/{job_id}").get_json()

    assert doc["kind"] == "text_to_video" and doc["status"] == "succeeded"
    assert doc["images"] == []
    (output,) = doc["outputs"]
    assert tuple(output) == OUTPUT_FIELDS
    assert output["type"] == "video" and output["index"] == 0 and output["status"] == "pending"
    assert output["source_url"] == video["url"]
    assert output["duration"] == float(video["duration"])


def test_an_image_jobs_images_are_unchanged_and_also_in_outputs(api: Api) -> None:
    job_id = _succeeded(api, "image", "kling/query-succeed-200")
    rows = list(api.session.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.index)))

    doc = api.get(f"/v1/jobs/{job_id}").get_json()

    assert [tuple(i) for i in doc["images"]] == [IMAGE_FIELDS] * len(rows)
    assert [i["source_url"] for i in doc["images"]] == [r.source_url for r in rows]
    assert [(o["type"], o["index"], o["duration"]) for o in doc["outputs"]] == [
        ("image", r.index, None) for r in rows
    ]
    # Each image entry is its output entry without the output-only keys.
    for image, output in zip(doc["images"], doc["outputs"], strict=True):
        assert image == {k: output[k] for k in IMAGE_FIELDS}


def test_the_openapi_output_schema_has_the_document_fields() -> None:
    schema = openapi_document()["components"]["schemas"]["Output"]
    assert tuple(schema["properties"]) == OUTPUT_FIELDS == tuple(schema["required"])
    union = openapi_document()["components"]["schemas"]["JobRequest"]
    assert union["discriminator"]["propertyName"] == "kind"
    assert list(union["discriminator"]["mapping"]) == list(KIND_NAMES)
    assert [ref["$ref"] for ref in union["oneOf"]] == list(union["discriminator"]["mapping"].values())
