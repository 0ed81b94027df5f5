"""`klingctl submit`, `jobs` and `show`: create jobs straight in the database and look at them."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session, defer, selectinload, sessionmaker

from kling.kinds import DEFAULT_KIND, KIND_NAMES, kind_for
from klingctl.common import celery_publisher, console, db_handles, settings
from klingctl.errors import UsageLine
from klingctl.render import job_detail, jobs_table, plain, status_text
from models.base import utcnow
from models.db import session_scope
from models.documents import stored_params
from models.enums import JobStatus
from models.events import EVENTS, parse_webhook_events
from models.job_control import MAX_DEADLINE_SECONDS
from models.priorities import PRIORITIES
from models.tables import DEFAULT_TENANT, Job, Tenant, of_tenant

FINAL = frozenset(s.value for s in JobStatus if s.is_terminal)
# How often `--wait` looks at the job; only the display depends on it.
WAIT_POLL_SECONDS = 0.5


def image_value(value: str) -> str:
    """An http(s) URL as given, or a local file as the bare base64 Kling wants."""
    if value.startswith(("http://", "https://")):
        return value
    path = Path(value).expanduser()
    try:
        return base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as exc:
        raise UsageLine(f"image: cannot read {value}: {exc.strerror or exc}") from None


def build_params(
    prompt: str | None,
    *,
    n: int | None = None,
    aspect_ratio: str | None = None,
    model: str | None = None,
    resolution: str | None = None,
    negative_prompt: str | None = None,
    image: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provider request fields given on the command line (unset options are left out);
    `extra` (`--param`) adds any other field of the job's kind."""
    fields = {
        "prompt": prompt,
        "n": n,
        "aspect_ratio": aspect_ratio,
        "model_name": model,
        "resolution": resolution,
        "negative_prompt": negative_prompt,
        "image": image_value(image) if image else None,
        **(extra or {}),
    }
    return {k: v for k, v in fields.items() if v is not None}


def parse_param(raw: str) -> tuple[str, Any]:
    """`--param NAME=VALUE`: VALUE as JSON when it parses (numbers, lists, objects), else as text;
    `@PATH` reads a local image as bare base64 (e.g. `human_image=@me.jpg`)."""
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise UsageLine(f"param: {raw!r} is not NAME=VALUE")
    if value.startswith("@"):
        return name, image_value(value[1:])
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def parse_metadata(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageLine(f"metadata: is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise UsageLine("metadata: must be a JSON object")
    return value


def wait_final(
    sessions: sessionmaker[Session],
    job_id: str,
    *,
    timeout: float,
    on_status: Callable[[str], None],
) -> str:
    """Poll the job until it ends (archived, failed, cancelled, expired); returns that status
    (TimeoutError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(sessions) as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
        if status is None:
            raise click.ClickException(f"job {job_id} disappeared")
        on_status(status)
        if status in FINAL:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {status} after {timeout:g} s")
        time.sleep(WAIT_POLL_SECONDS)


@click.command()
@click.argument("prompt", required=False)
@click.option(
    "--kind",
    type=click.Choice(KIND_NAMES),
    default=DEFAULT_KIND,
    show_default=True,
    help="Task kind: what is created at Kling and what it yields (images or a video).",
)
@click.option(
    "--param",
    "param",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any other provider field of the kind (repeatable); VALUE is JSON or text, @PATH a local image.",
)
@click.option("--n", "n", type=int, default=None, help="Images to generate (1-9; each holds one slot).")
@click.option("--aspect-ratio", default=None, help="16:9, 9:16, 1:1, 4:3, 3:4, 3:2, 2:3 or 21:9.")
@click.option("--model", default=None, help="model_name, e.g. kling-v3 (provider default when unset).")
@click.option("--resolution", default=None, help="1k or 2k.")
@click.option("--negative-prompt", default=None, help="What the image must not show.")
@click.option("--image", default=None, metavar="PATH|URL", help="Reference image: a local jpg/png or a URL.")
@click.option("--webhook-url", default=None, help="POST a signed event here when the job ends.")
@click.option("--metadata", default=None, metavar="JSON", help="A JSON object kept with the job.")
@click.option(
    "--priority", type=click.Choice(PRIORITIES), default="normal", show_default=True, help="Queue order."
)
@click.option(
    "--deadline",
    "deadline_seconds",
    type=click.IntRange(1, MAX_DEADLINE_SECONDS),
    default=None,
    help="Seconds it may wait queued; then it expires, never submitted.",
)
@click.option(
    "--webhook-event",
    "webhook_events",
    multiple=True,
    type=click.Choice(EVENTS),
    help="An event the --webhook-url hears (repeatable; default how the job ended).",
)
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True, help="The tenant the job is for.")
@click.option("--wait", is_flag=True, help="Show progress until the job is archived or failed.")
@click.option(
    "--timeout", default=600.0, show_default=True, type=click.FloatRange(0), help="Seconds --wait waits."
)
def submit(
    *,
    prompt: str | None,
    kind: str,
    param: tuple[str, ...],
    n: int | None,
    aspect_ratio: str | None,
    model: str | None,
    resolution: str | None,
    negative_prompt: str | None,
    image: str | None,
    webhook_url: str | None,
    metadata: str | None,
    priority: str,
    deadline_seconds: int | None,
    webhook_events: tuple[str, ...],
    tenant: str,
    wait: bool,
    timeout: float,
) -> None:
    """Queue a job (an image job unless --kind says otherwise) and print its id.

    The job is written to the database with its submit message (outbox), which is then sent to the
    broker. With --wait the exit code says how it ended: 0 archived, 1 failed (or cancelled or
    expired meanwhile); 2 is bad input.
    """
    from models.statemachine import create_job
    from worker.outbox import publish_rows

    cfg = settings()
    params = build_params(
        prompt,
        n=n,
        aspect_ratio=aspect_ratio,
        model=model,
        resolution=resolution,
        negative_prompt=negative_prompt,
        image=image,
        extra=dict(parse_param(raw) for raw in param),
    )
    problems = kind_for(kind).validate(params, cfg.kling_provider)
    if problems:
        raise UsageLine("invalid request: " + "; ".join(str(p) for p in problems))
    if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
        raise UsageLine("webhook_url: must be an http(s) URL")
    meta = parse_metadata(metadata)
    events, event_errors = parse_webhook_events(list(webhook_events) or None, has_url=webhook_url is not None)
    if event_errors:
        raise UsageLine("invalid request: " + "; ".join(str(p) for p in event_errors))
    deadline = utcnow() + timedelta(seconds=deadline_seconds) if deadline_seconds else None

    engine, sessions = db_handles(cfg)
    try:
        with session_scope(sessions) as s:
            if s.get(Tenant, tenant) is None:
                raise UsageLine(f"no tenant {tenant!r} (klingctl tenants)")
            created = create_job(
                s,
                params,
                provider=cfg.kling_provider,
                kind=kind,
                webhook_url=webhook_url,
                metadata=meta,
                priority=priority,
                deadline_at=deadline,
                webhook_events=events,
                tenant=tenant,
            )
            job_id = created.job.id
        _, publish = celery_publisher(cfg)
        # No row for a job deep in the queue: the pump dispatches it.
        if created.outbox and publish_rows(sessions, publish, created.outbox) == 0:
            click.echo(
                "warning: the broker did not take the submit message; it stays in the outbox "
                "until the beat relays it",
                err=True,
            )
        click.echo(job_id)
        if not wait:
            return
        err = console(stderr=True)
        with err.status(f"{job_id}: queued") as spinner:
            final = wait_final(
                sessions,
                job_id,
                timeout=timeout,
                on_status=lambda status: spinner.update(f"{job_id}: {status}"),
            )
        with session_scope(sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            error = f"{job.error_code}: {job.error_message}" if job.error_message else job.error_code
            archived = [img for img in job.images if img.s3_key]
        if final != JobStatus.ARCHIVED.value:  # failed, or cancelled / expired meanwhile
            err.print(status_text(final), plain(error or ""))
            raise SystemExit(1)
        err.print(status_text("archived"), f"{len(archived)} output(s)")
        for img in archived:
            click.echo(f"s3://{img.s3_bucket}/{img.s3_key} sha256={img.sha256}")
    finally:
        engine.dispose()


@click.command()
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), default=None, help="Only these.")
@click.option("--tenant", default=None, help="Only this tenant's.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="Newest first.")
def jobs(*, status: str | None, tenant: str | None, limit: int) -> None:
    """List jobs, newest first."""
    engine, sessions = db_handles(settings())
    try:
        # The request as the API's pages read it: an inline image is its size, not 13 MB per row.
        query = (
            select(Job, stored_params().label("params"))
            .options(defer(Job.params, raiseload=True))
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(limit)
        )
        if status:
            query = query.where(Job.status == status)
        if tenant:
            query = query.where(of_tenant(tenant))
        with session_scope(sessions) as s:
            rows = [(job, params) for job, params in s.execute(query)]
        if not rows:
            which = [f"status {status}"] if status else []
            which += [f"tenant {tenant}"] if tenant else []
            click.echo("No jobs" + (f" with {' and '.join(which)}." if which else "."))
            return
        console().print(jobs_table(rows))
    finally:
        engine.dispose()


@click.command()
@click.argument("job_id")
def show(*, job_id: str) -> None:
    """Show one job: its transitions, images, S3 locations and checksums."""
    engine, sessions = db_handles(settings())
    try:
        with session_scope(sessions) as s:
            job = s.scalar(
                select(Job)
                .where(Job.id == job_id)
                .options(selectinload(Job.images), selectinload(Job.transitions))
            )
        if job is None:
            raise click.ClickException(f"no job {job_id}")
        console().print(job_detail(job))
    finally:
        engine.dispose()
