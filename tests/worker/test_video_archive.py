"""Video outputs archived through `archive_job` on real parts: PostgreSQL, the simulator's MP4s over
HTTP and moto S3 over HTTP. The rows are made here (type "video") as the pipeline will make them."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import update

from kling import KlingClient
from models.db import session_scope
from models.enums import JobStatus
from models.tables import Image
from tests.factories import make_job
from tests.worker.harness import Harness
from worker import archiving
from worker.outcome import Step

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def video_job(harness: Harness, size: int) -> tuple[str, str]:
    """(job id, provider task id) of a succeeded job whose output 0 is the simulator's ~`size`-byte MP4."""
    harness.sim.configure(video_bytes=size)
    provider = harness.svc.provider
    assert isinstance(provider, KlingClient)  # the harness's: it makes every kind of task
    task = provider.create_task("text_to_video", {"prompt": "a lighthouse", "duration": "5"})
    harness.wait_sim_final(task.task_id)
    info = harness.sim.task(task.task_id)
    assert info is not None
    url = info["task_object"]["task_result"]["videos"][0]["url"]
    with session_scope(harness.svc.sessions) as s:
        job_id = make_job(s, JobStatus.SUCCEEDED, n=1).id
    with session_scope(harness.svc.sessions) as s:
        s.execute(
            update(Image)
            .where(Image.job_id == job_id, Image.index == 0)
            .values(type="video", source_url=url, duration=5.0)
        )
    return job_id, task.task_id


def sha256_of_object(s3: Any, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("size", [3 * MiB, 40 * MiB], ids=["single-put", "multipart"])
def test_video_output_is_archived_byte_identical_to_its_mp4_key(harness: Harness, size: int) -> None:
    # The image cap is below the video: a video row is held to ARCHIVE_MAX_BYTES_VIDEO only.
    harness.svc.settings = harness.svc.settings.model_copy(update={"archive_max_bytes": MiB})
    job_id, task_id = video_job(harness, size)
    assert archiving.archive_job(harness.svc, job_id).step is Step.DONE

    job = harness.get(job_id)
    assert job.status == "archived"
    (img,) = job.images
    expected = harness.sim.video_sha256(task_id, 0)
    assert (img.status, img.type, img.content_type) == ("archived", "video", "video/mp4")
    assert (img.s3_bucket, img.s3_key) == (harness.svc.settings.s3_bucket, f"images/{job_id}/0.mp4")
    assert img.s3_bucket is not None and img.s3_key is not None
    assert (img.sha256, img.bytes) == (expected, harness.sim.video_size(task_id, 0))
    assert sha256_of_object(harness.svc.s3, img.s3_bucket, img.s3_key) == expected
    head = harness.svc.s3.head_object(Bucket=img.s3_bucket, Key=img.s3_key)
    assert (head["ContentType"], head["Metadata"]["sha256"]) == ("video/mp4", expected)


def test_video_over_its_cap_fails_the_row_naming_the_setting(harness: Harness) -> None:
    harness.svc.settings = harness.svc.settings.model_copy(update={"archive_max_bytes_video": 2 * MiB})
    job_id, _ = video_job(harness, 3 * MiB)
    assert archiving.archive_job(harness.svc, job_id).step is Step.FAILED

    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("failed", "archive_refused")
    assert job.error_message is not None
    assert job.error_message.startswith("video 0: ")
    assert "exceeds the cap of 2097152 bytes" in job.error_message
    assert "ARCHIVE_MAX_BYTES_VIDEO" in job.error_message
    assert [img.status for img in job.images] == ["failed"]
    listing = harness.svc.s3.list_objects_v2(
        Bucket=harness.svc.settings.s3_bucket, Prefix=f"images/{job_id}/"
    )
    assert listing.get("KeyCount", 0) == 0


class PartRecorder:
    """The real S3 client, recording every part sent; `fail_part` makes that part's upload raise
    once, as a dropped S3 connection would."""

    def __init__(self, s3: Any, fail_part: int | None = None) -> None:
        self._s3 = s3
        self.fail_part = fail_part
        self.sent: list[int] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._s3, name)
        if name != "upload_part":
            return method

        def upload_part(**kwargs: Any) -> Any:
            number = kwargs["PartNumber"]
            if number == self.fail_part:
                self.fail_part = None
                raise EndpointConnectionError(endpoint_url="http://s3.test")
            with self._lock:
                self.sent.append(number)
            return method(**kwargs)

        return upload_part


def test_interrupted_video_upload_is_resumed_without_sending_finished_parts(harness: Harness) -> None:
    s3, bucket = harness.svc.s3, harness.svc.settings.s3_bucket
    job_id, task_id = video_job(harness, 40 * MiB)  # 5 parts of 8 MiB
    key = f"images/{job_id}/0.mp4"

    first = PartRecorder(s3, fail_part=4)
    harness.svc.s3 = first
    outcome = archiving.archive_job(harness.svc, job_id)
    assert outcome.step is Step.RETRY
    # The upload is left open with the parts that made it; nothing is at the key yet.
    (upload,) = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)["Uploads"]
    kept = {
        p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])["Parts"]
    }
    assert kept and 4 not in kept
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0

    second = PartRecorder(s3)
    harness.svc.s3 = second
    assert archiving.archive_job(harness.svc, job_id, claim=outcome.claim).step is Step.DONE
    assert sorted(second.sent) == sorted({1, 2, 3, 4, 5} - kept)

    (img,) = harness.get(job_id).images
    expected = harness.sim.video_sha256(task_id, 0)
    assert (img.status, img.s3_key, img.sha256) == ("archived", key, expected)
    assert sha256_of_object(s3, bucket, key) == expected
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"] == expected
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
