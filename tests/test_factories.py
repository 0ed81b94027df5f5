"""The job factory builds every state through the real writers (tests rely on what it builds)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from models.enums import JobStatus
from tests.factories import make_job

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("status", list(JobStatus))
def test_every_status_is_reached_with_its_transitions(db_session: Session, status: JobStatus) -> None:
    job = make_job(db_session, status, n=2, webhook_url="https://hooks.example.com/x")
    db_session.commit()
    db_session.refresh(job)
    assert job.status == status
    moves = [t.to_status for t in job.transitions]
    assert moves[0] == "queued" and moves[-1] == status
    assert len(moves) == len(set(moves))  # one transition per status, never backwards
    has_images = status in (JobStatus.SUCCEEDED, JobStatus.ARCHIVED)
    assert len(job.images) == (2 if has_images else 0)
    if status is JobStatus.ARCHIVED:
        assert all(img.status == "archived" and img.s3_key for img in job.images)
    if status is JobStatus.FAILED:
        assert (job.error_code, moves) == ("1301", ["queued", "submitted", "failed"])


def test_a_job_can_fail_after_it_succeeded(db_session: Session) -> None:
    job = make_job(db_session, "failed", fail_after="succeeded", error_code="source_expired")
    db_session.commit()
    db_session.refresh(job)
    assert [t.to_status for t in job.transitions][-2:] == ["succeeded", "failed"]
    assert job.error_code == "source_expired"
