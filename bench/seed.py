"""Bulk rows for the benchmarks: jobs with their images and transitions (and, on request, the
outbox rows and stored callbacks of their history), written with COPY.

The ORM path (`create_job`) is exercised by the pipeline benchmarks; here we need 100,000 jobs in
seconds, in the shapes the state machine would have left them in.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

PATH = ["queued", "submitted", "processing", "succeeded", "archived"]
# Status mix of a long-running installation: mostly finished jobs, a few in flight.
STATUS_MIX = {
    "archived": 0.80,
    "failed": 0.06,
    "succeeded": 0.03,
    "processing": 0.04,
    "submitted": 0.03,
    "queued": 0.04,
}


def libpq_url(sqlalchemy_url: str) -> str:
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass
class SeedReport:
    jobs: int
    images: int
    transitions: int
    job_ids_by_status: dict[str, list[str]]


def seed_jobs(
    database_url: str,
    count: int,
    *,
    statuses: dict[str, float] | None = None,
    seed: int = 1,
    image_base: str = "http://127.0.0.1:9/images",
    keep_ids: int = 2000,
    history: bool = False,
) -> SeedReport:
    """Insert `count` jobs (status drawn from `statuses`), one image per job that reached
    `succeeded`, and one transition row per step of each job's path. With `history`, also what
    the pipeline leaves behind: a published outbox row per message (`submit_job`; `release_slots`
    and `archive_job` after a final report) and a stored Kling callback per reported step.
    Returns a sample of ids."""
    rng = random.Random(seed)
    mix = statuses or STATUS_MIX
    names, weights = list(mix), list(mix.values())
    now = datetime.now(UTC)
    jobs: list[tuple[object, ...]] = []
    images: list[tuple[object, ...]] = []
    transitions: list[tuple[object, ...]] = []
    outbox: list[tuple[object, ...]] = []
    events: list[tuple[object, ...]] = []
    by_status: dict[str, list[str]] = {s: [] for s in names}
    for i in range(count):
        status = rng.choices(names, weights)[0]
        job_id = str(uuid.uuid4())
        if len(by_status[status]) < keep_ids:
            by_status[status].append(job_id)
        created = now - timedelta(seconds=(count - i) * 20)
        failed = status == "failed"
        path = [*PATH[: rng.randint(1, 3)], "failed"] if failed else PATH[: PATH.index(status) + 1]
        steps = [created + timedelta(seconds=k * 5) for k in range(len(path))]
        task_id = f"task-{job_id}" if len(path) > 1 and path[1] != "failed" else None
        finished = steps[-1] if status in ("archived", "failed") else None
        jobs.append(
            (
                job_id,
                "kling",
                Jsonb({"prompt": f"bench image {i}", "n": 1, "aspect_ratio": "1:1"}),
                task_id,
                status,
                "provider_failed" if status == "failed" else None,
                "the provider reported the task failed" if status == "failed" else None,
                1,
                created,
                steps[-1],
                steps[1] if len(steps) > 1 else None,
                finished,
                steps[-1] if len(steps) > 1 else None,
            )
        )
        prev: str | None = None
        for k, to in enumerate(path):
            source = "api" if k == 0 else ("worker" if to == "submitted" else "callback")
            if to == "archived":
                source = "archiver"
            transitions.append((job_id, prev, to, source, steps[k]))
            prev = to
            if history and source == "callback" and task_id:
                events.append(
                    _callback_event(job_id, task_id, to, created=steps[0], at=steps[k], image_base=image_base)
                )
        if history:
            outbox.extend(_outbox_rows(job_id, path, steps, has_task=task_id is not None))
        if "succeeded" in path:
            archived = status == "archived"
            images.append(
                (
                    job_id,
                    0,
                    f"{image_base}/{task_id}/0.png",
                    "archived" if archived else "pending",
                    "kling-archive" if archived else None,
                    f"images/{job_id}/0.png" if archived else None,
                    "0" * 64 if archived else None,
                    1_048_576 if archived else None,
                    "image/png" if archived else None,
                    steps[-1] if archived else None,
                    steps[path.index("succeeded")],
                )
            )
    with psycopg.connect(libpq_url(database_url)) as conn:
        _copy(
            conn,
            "jobs (id, provider, params, provider_task_id, status, error_code, error_message, slots,"
            " created_at, updated_at, submitted_at, finished_at, last_provider_update_at)",
            jobs,
        )
        _copy(
            conn,
            'images (job_id, "index", source_url, status, s3_bucket, s3_key, sha256, bytes,'
            " content_type, archived_at, provider_created_at)",
            images,
        )
        _copy(conn, "transitions (job_id, from_status, to_status, source, at)", transitions)
        _copy(conn, "outbox (task, args, created_at, available_at, dispatched_at, attempts)", outbox)
        _copy(
            conn,
            "callback_events (job_id, dedupe_key, task_status, headers, body, received_at, outcome)",
            events,
        )
        conn.commit()
        conn.execute("ANALYZE")
    return SeedReport(len(jobs), len(images), len(transitions), by_status)


_KLING_STATUS = {"processing": "processing", "succeeded": "succeed", "failed": "failed"}


def _callback_event(
    job_id: str, task_id: str, to: str, *, created: datetime, at: datetime, image_base: str
) -> tuple[object, ...]:
    """A callback as the receiver stores it: Kling's legacy body and the headers it keeps."""
    millis = int(at.timestamp() * 1000)
    body: dict[str, object] = {
        "task_id": task_id,
        "task_status": _KLING_STATUS[to],
        "task_status_msg": "Failure to pass the risk control system" if to == "failed" else "",
        "task_info": {"external_task_id": job_id},
        "created_at": int(created.timestamp() * 1000),
        "updated_at": millis,
    }
    if to == "succeeded":
        url = f"{image_base}/{task_id}/0"
        body["task_result"] = {
            "images": [{"index": 0, "url": f"{url}.png", "watermark_url": f"{url}_wm.png"}]
        }
        body["final_unit_deduction"] = "1"
    text = json.dumps(body)
    webhook_id = f"msg_{uuid.uuid4().hex}"
    headers = {
        "content-type": "application/json",
        "content-length": str(len(text)),
        "user-agent": "Kling-Callback/1.0",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(millis // 1000),
    }
    key = f"webhook-id:{webhook_id}"
    return (job_id, key, _KLING_STATUS[to], Jsonb(headers), text, at, "applied")


def _outbox_rows(
    job_id: str, path: list[str], steps: list[datetime], *, has_task: bool
) -> list[tuple[object, ...]]:
    """The published messages of a job's path: its submit, and the slot release and archive that
    a final report queues (a job refused at submit held no slots)."""
    args = Jsonb([job_id])
    rows: list[tuple[object, ...]] = [("submit_job", args, steps[0], steps[0], steps[0], 1)]
    final = next((k for k, to in enumerate(path) if to in ("succeeded", "failed")), None)
    if final is not None and has_task:
        at = steps[final]
        rows.append(("release_slots", args, at, at, at, 1))
        if path[final] == "succeeded":
            rows.append(("archive_job", args, at, at, at, 1))
    return rows


def _copy(conn: psycopg.Connection[object], target: str, rows: Iterable[tuple[object, ...]]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
