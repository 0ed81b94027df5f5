"""The demo's batch on a running `DemoStack`: plan it, submit it, count its progress, and verify
every job's end: each archived object is read back from S3 and hashed, and must match both the
database and what the provider served.

The image jobs are written straight to the database (the simulator must know which of them lose
their callbacks before any submit goes out); the other task kinds go through `POST /v1/jobs` with
`kind`, as a client sends them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import click
import requests
from sqlalchemy import func, select

from kling.kinds import kind_for
from klingctl.demo_pack import ACCOUNT_CODES, PackOutage, dry_after
from klingctl.demo_stack import DemoStack
from models.db import session_scope
from models.enums import ImageStatus, JobStatus
from models.tables import Image, Job

RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
SUBJECTS = (
    "a lighthouse at dawn",
    "a fox in fresh snow",
    "a tram in Lisbon",
    "a bowl of ramen",
    "a glass greenhouse",
    "an old sailing ship",
    "a desert at night",
    "a red bicycle",
)
POLICY_CODE = "1301"
# The other task kinds in the batch (kling/kind_rules.py has what each requires). The simulator
# never fetches the try-on's inputs; a real account would need reachable images.
KIND_REQUESTS: tuple[dict[str, Any], ...] = (
    {
        "kind": "text_to_video",
        "prompt": "a fox runs through fresh snow, tracking shot",
        "duration": "5",
        "mode": "std",
        "aspect_ratio": "16:9",
    },
    {
        "kind": "try_on",
        "model_name": "kolors-virtual-try-on-v1-5",
        "human_image": "https://example.com/demo/person.png",
        "cloth_image": "https://example.com/demo/raincoat.png",
    },
)
POST_SECONDS = 10


@dataclass
class DemoJob:
    id: str
    params: dict[str, Any]
    expect: str  # "archived", or "failed" for the content-policy job
    kind: str = "image"
    callbacks_dropped: bool = False

    @property
    def outputs(self) -> int:
        """How many outputs the job must end with (n images, one video, one try-on image)."""
        return kind_for(self.kind).output_count(self.params)

    @property
    def ratio(self) -> str:
        return str(self.params.get("aspect_ratio") or "-")


@dataclass
class Verdict:
    job_id: str
    kind: str
    status: str
    n: int
    ratio: str
    keys: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)  # of each output read back: image or video
    ok: bool = False
    note: str = ""


@dataclass
class Batch:
    jobs: list[DemoJob]
    outage: PackOutage | None  # the pack running dry mid-run, when armed

    @property
    def ids(self) -> list[str]:
        return [j.id for j in self.jobs]


def plan_batch(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` image job requests: n 1..4, every aspect ratio, one prompt the provider refuses."""
    rng = random.Random(seed)  # noqa: S311  (variety, not security)
    policy_at = min(2, count - 1)
    batch = []
    for i in range(count):
        subject = SUBJECTS[i % len(SUBJECTS)]
        prompt = f"{subject}, [policy] violent content" if i == policy_at else f"{subject}, film photo"
        batch.append({"prompt": prompt, "n": 1 + (i + rng.randrange(4)) % 4, "aspect_ratio": RATIOS[i % 8]})
    return batch


def submit(stack: DemoStack, count: int, *, dry_pack: bool, kinds: bool) -> Batch:
    """Create the batch: `count` image jobs, then (with `kinds`) one job of each KIND_REQUESTS."""
    from models.db import make_sessionmaker
    from models.outbox import OutboxEntry
    from models.statemachine import create_job
    from worker.outbox import publish_rows

    jobs: list[DemoJob] = []
    rows: list[OutboxEntry] = []
    # A session without the after-commit hook: the simulator must know which jobs lose their
    # callbacks before any submit goes out.
    with session_scope(make_sessionmaker(stack.svc.engine)) as s:
        for params in plan_batch(count, stack.seed):
            created = create_job(s, params, provider="kling", metadata={"demo": stack.stamp})
            expect = "failed" if "[policy]" in params["prompt"] else "archived"
            jobs.append(DemoJob(created.job.id, params, expect))
            rows += created.outbox
    # Every callback of every fourth job is lost: only the reconciler's polling can finish those.
    silent = [j for j in jobs if j.expect == "archived"][1::4]
    for j in silent:
        j.callbacks_dropped = True
    stack.sim.configure(task_overrides={j.id: {"callback_drop_rate": 1.0} for j in silent})
    outage = None
    if dry_pack:
        outage = PackOutage(dry_after(count + (len(KIND_REQUESTS) if kinds else 0)))
        outage.arm(stack.sim)
    assert stack.svc.publish is not None
    publish_rows(stack.svc.sessions, stack.svc.publish, rows)
    if kinds:
        jobs += [post_job(stack, request) for request in KIND_REQUESTS]
    return Batch(jobs, outage)


def post_job(stack: DemoStack, request: dict[str, Any]) -> DemoJob:
    """One job through the API, as a client creates it: `POST /v1/jobs` with its `kind`."""
    body = {**request, "metadata": {"demo": stack.stamp}}
    answer = requests.post(
        f"{stack.public_url}/v1/jobs",
        json=body,
        headers={"Authorization": f"Bearer {stack.api_token}"},
        timeout=POST_SECONDS,
    )
    if answer.status_code != 202:
        detail = " ".join(answer.text.split())[:300]
        kind, status = request["kind"], answer.status_code
        raise click.ClickException(f"POST /v1/jobs kind={kind}: HTTP {status} {detail}")
    params = {k: v for k, v in request.items() if k != "kind"}
    return DemoJob(answer.json()["id"], params, "archived", kind=request["kind"])


def snapshot(stack: DemoStack, ids: list[str]) -> tuple[dict[str, int], int, int, int]:
    """(jobs by status, outputs archived, outputs known, bytes archived)."""
    with session_scope(stack.svc.sessions) as s:
        counts = dict(
            s.execute(select(Job.status, func.count()).where(Job.id.in_(ids)).group_by(Job.status)).all()
        )
        archived, total, nbytes = s.execute(
            select(
                func.count().filter(Image.status == ImageStatus.ARCHIVED),
                func.count(),
                func.coalesce(func.sum(Image.bytes), 0),
            ).where(Image.job_id.in_(ids))
        ).one()
    return counts, int(archived), int(total), int(nbytes or 0)


def failed_on_account(stack: DemoStack, ids: list[str]) -> int:
    """Jobs failed with a code about the account (a dry pack must never fail a job)."""
    with session_scope(stack.svc.sessions) as s:
        query = select(func.count()).where(Job.id.in_(ids), Job.error_code.in_(ACCOUNT_CODES))
        return int(s.scalar(query) or 0)


def verify(stack: DemoStack, jobs: list[DemoJob]) -> list[Verdict]:
    """Check each job's final state; read every archived object back from S3 and hash it."""
    verdicts = []
    with session_scope(stack.svc.sessions) as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([d.id for d in jobs])))}
        outputs = {job_id: list(job.images) for job_id, job in rows.items()}
    for d in jobs:
        job = rows[d.id]
        v = Verdict(d.id, d.kind, job.status, d.outputs, d.ratio)
        verdicts.append(v)
        if d.expect == "failed":
            v.ok = job.status == "failed" and job.error_code == POLICY_CODE
            v.note = f"refused by provider ({job.error_code})" if v.ok else f"expected failed {POLICY_CODE}"
            continue
        if job.status != JobStatus.ARCHIVED.value:
            v.note = f"expected archived: {job.error_code or ''} {job.error_message or ''}".strip()
            continue
        problems = []
        for out in outputs[d.id]:
            body = stack.s3.get_object(Bucket=out.s3_bucket, Key=out.s3_key)["Body"].read()
            digest = hashlib.sha256(body).hexdigest()
            served = stack.sim.video_sha256 if out.type == "video" else stack.sim.image_sha256
            v.keys.append(out.s3_key or "")
            v.sha256.append(digest)
            v.types.append(out.type)
            if not digest == out.sha256 == served(job.provider_task_id or "", out.index):
                problems.append(f"{out.type} {out.index} sha256 mismatch")
        if len(outputs[d.id]) != v.n:
            problems.append(f"{len(outputs[d.id])} outputs, expected {v.n}")
        v.ok = not problems
        v.note = "; ".join(problems) or (
            "sha256 verified" + (" (callbacks lost, polled)" if d.callbacks_dropped else "")
        )
    return verdicts
