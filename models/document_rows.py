"""A page of job documents' child rows: transitions, outputs and notifications, by job id.

Built once per dialect (building a statement costs more CPU than running it). On PostgreSQL a
job's transitions and outputs are also folded into its own row as JSON arrays (`folded_*`), so a
document is one round trip; SQLite reads them with the plain queries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Label, Select, String, Table, func, select
from sqlalchemy.dialects.postgresql import aggregate_order_by

from models.db import among_ids
from models.tables import Image, Job, Notification, Transition


@dataclass(frozen=True)
class ChildQueries:
    transitions: Select[Any]
    images: Select[Any]
    notifications: Select[Any]
    # PostgreSQL: a job's transitions and outputs as JSON arrays of `_TransitionRow` and
    # `_OutputRow` values, columns of the job's own row.
    folded_transitions: Label[Any]
    folded_outputs: Label[Any]


def _json_time(value: str | None) -> datetime | None:
    # PostgreSQL writes a timestamptz into JSON as ISO 8601 with its offset, to the microsecond.
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class _TransitionRow:
    job_id: str
    from_status: str | None
    to_status: str
    source: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class _OutputRow:
    job_id: str
    index: int
    type: str
    status: str
    source_url: str | None
    s3_bucket: str | None
    s3_key: str | None
    sha256: str | None
    bytes: int | None
    content_type: str | None
    duration: float | None
    archived_at: datetime | None


# The JSON arrays' columns, in the rows' field order (each is a column of its table).
_TRANSITION_COLUMNS = tuple(f.name for f in fields(_TransitionRow))[1:]
_OUTPUT_COLUMNS = tuple(f.name for f in fields(_OutputRow))[1:]


def unfolded(jobs: Sequence[Any]) -> tuple[list[_TransitionRow], list[_OutputRow]]:
    """The child rows of `jobs` read with `folded_transitions` and `folded_outputs`."""
    transitions = [
        _TransitionRow(job.id, from_status, to_status, source, _json_time(at))
        for job in jobs
        for from_status, to_status, source, at in job.transitions_json or ()
    ]
    outputs = [_output_row(job.id, values) for job in jobs for values in job.outputs_json or ()]
    return transitions, outputs


def _output_row(job_id: str, values: list[Any]) -> _OutputRow:
    row = dict(zip(_OUTPUT_COLUMNS, values, strict=True))
    row["archived_at"] = _json_time(row["archived_at"])
    if row["duration"] is not None:  # JSON writes a float8 of 5.0 as 5
        row["duration"] = float(row["duration"])
    return _OutputRow(job_id=job_id, **row)


@functools.cache
def child_queries(postgresql: bool) -> ChildQueries:
    """The rows of a page's jobs, built once per dialect (building a statement costs more CPU than
    running it). On PostgreSQL the ids are one array parameter; an IN list is rendered anew for
    each length."""
    tr, im, no = (cast(Table, model.__table__) for model in (Transition, Image, Notification))

    def among(column: ColumnElement[str]) -> ColumnElement[bool]:
        return among_ids(column, String(), postgresql=postgresql)

    c = tr.c
    transitions = select(c.job_id, c.from_status, c.to_status, c.source, c.at)
    c = im.c
    images = select(c.job_id, c.index, c.type, c.status, c.source_url, c.s3_bucket, c.s3_key, c.sha256)
    c = no.c
    notifications = select(c.job_id, c.event, c.attempts, c.last_status, c.last_error, c.created_at)

    def folded(table: Table, columns: tuple[str, ...], order: ColumnElement[Any], name: str) -> Label[Any]:
        row = func.json_build_array(*(table.c[column] for column in columns))
        jobs = cast(Table, Job.__table__)
        found = select(func.json_agg(aggregate_order_by(row, order))).where(table.c.job_id == jobs.c.id)
        return found.scalar_subquery().label(name)

    return ChildQueries(
        folded_transitions=folded(tr, _TRANSITION_COLUMNS, tr.c.id, "transitions_json"),
        folded_outputs=folded(im, _OUTPUT_COLUMNS, im.c.index, "outputs_json"),
        transitions=transitions.where(among(tr.c.job_id)).order_by(tr.c.id),
        images=images.add_columns(im.c.bytes, im.c.content_type, im.c.duration, im.c.archived_at)
        .where(among(im.c.job_id))
        .order_by(im.c.job_id, im.c.index),
        notifications=notifications.add_columns(no.c.delivered_at, no.c.next_attempt_at)
        .where(among(no.c.job_id))
        .order_by(no.c.id),
    )


__all__ = ["ChildQueries", "child_queries", "unfolded"]
