"""Rich renderings of jobs: the list table, one job in detail, the live status counts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from models.enums import JobStatus
from models.tables import Image, Job

STATUS_STYLES = {
    "queued": "white",
    "submitted": "cyan",
    "processing": "blue",
    "succeeded": "magenta",
    "archived": "green",
    "failed": "red",
    "pending": "yellow",
    "expired": "red",
    "cancelled": "dim",
}
STATUS_ORDER = [s.value for s in JobStatus]


# C0 and C1 controls (ESC and CSI start terminal escape sequences; CR and BS overwrite what was
# printed) and the bidirectional overrides that reorder what the reader sees.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object) -> Text:
    """Caller or provider text for the terminal: never read as rich markup, and every control
    character shown as a visible escape (`\\x1b`) instead of reaching the terminal."""
    return Text(_CONTROL.sub(_visible, str(value)))


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def s3_uri(image: Image) -> str:
    return f"s3://{image.s3_bucket}/{image.s3_key}" if image.s3_bucket and image.s3_key else "-"


def job_error(job: Job) -> str:
    if job.status != JobStatus.FAILED.value:
        return ""
    return f"{job.error_code}: {job.error_message}" if job.error_message else str(job.error_code)


def jobs_table(jobs: Iterable[tuple[Job, Mapping[str, Any] | None]]) -> Table:
    """Jobs with their request (`params` as `models.documents.stored_params` reads it)."""
    table = Table(title="Jobs", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("status")
    table.add_column("n", justify="right")
    table.add_column("ratio")
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("prompt / error", overflow="fold")
    for job, stored in jobs:
        params = stored or {}
        detail = job_error(job) or str(params.get("prompt", ""))[:60]
        table.add_row(
            job.id,
            status_text(job.status),
            str(params.get("n", 1)),
            str(params.get("aspect_ratio", "-")),
            when(job.created_at),
            when(job.updated_at),
            plain(detail),  # caller text: never markup, never a terminal escape
        )
    return table


def job_detail(job: Job) -> RenderableType:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("job", job.id)
    head.add_row("status", status_text(job.status))
    head.add_row("provider", job.provider)
    head.add_row("provider task", plain(job.provider_task_id or "-"))
    head.add_row("created", when(job.created_at))
    head.add_row("updated", when(job.updated_at))
    if job.status == JobStatus.FAILED.value:
        head.add_row("error", plain(job_error(job)))
    params = job.params or {}
    shown = {
        k: (f"<{len(v)} chars>" if k == "image" and isinstance(v, str) and len(v) > 80 else v)
        for k, v in params.items()
    }
    head.add_row("params", plain(", ".join(f"{k}={v}" for k, v in shown.items())))
    if job.webhook_url:
        head.add_row("webhook", plain(job.webhook_url))
    if job.meta:
        head.add_row("metadata", plain(job.meta))

    timeline = Table(title="Transitions", title_justify="left")
    timeline.add_column("at", no_wrap=True)
    timeline.add_column("from")
    timeline.add_column("to")
    timeline.add_column("source")
    timeline.add_column("detail", overflow="fold")
    for t in job.transitions:
        timeline.add_row(
            when(t.at),
            t.from_status or "-",
            status_text(t.to_status),
            t.source,
            plain(", ".join(f"{k}={v}" for k, v in (t.detail or {}).items())),
        )

    images = Table(title="Images", title_justify="left")
    images.add_column("#", justify="right")
    images.add_column("status")
    images.add_column("S3", no_wrap=True)
    images.add_column("sha256", no_wrap=True)
    images.add_column("bytes", justify="right")
    images.add_column("archived", no_wrap=True)
    for img in job.images:
        images.add_row(
            str(img.index),
            status_text(img.status),
            plain(s3_uri(img)),
            img.sha256 or "-",
            str(img.bytes) if img.bytes is not None else "-",
            when(img.archived_at),
        )
    parts: list[RenderableType] = [head, timeline]
    parts.append(images if job.images else Text("No images yet.", style="dim"))
    return Group(*parts)


def counts_panel(counts: Mapping[str, int], extra: Mapping[str, str], *, title: str) -> Panel:
    row = Table.grid(padding=(0, 3))
    cells: list[Text] = []
    for status in STATUS_ORDER:
        cells.append(
            Text.assemble((f"{status} ", STATUS_STYLES[status]), (str(counts.get(status, 0)), "bold"))
        )
    for name, value in extra.items():
        cells.append(Text.assemble(f"{name} ", (value, "bold")))
    for _ in cells:
        row.add_column()
    row.add_row(*cells)
    return Panel(row, title=title, title_align="left")
