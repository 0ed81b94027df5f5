"""A callback's writes as one PostgreSQL statement (the receiver's fast path, `apply_callback`).

Why one statement: on a connection in autocommit mode it is its own transaction, so a callback
costs three round trips (ping, read, write) where a transaction holding the row lock takes five.
docs/performance.md tells the measurements behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BindParameter,
    Float,
    Integer,
    Select,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    null,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql

from models.rules import JobState, Plan
from models.tables import CallbackEvent, Image, Job, Outbox, Transition

JOBS = cast(Table, Job.__table__)
_IMAGES, _EVENTS = cast(Table, Image.__table__), cast(Table, CallbackEvent.__table__)
_TRANSITIONS, _OUTBOX = cast(Table, Transition.__table__), cast(Table, Outbox.__table__)
EVENT_COLUMNS = ("job_id", "dedupe_key", "task_status", "headers", "body", "outcome")
TRANSITION_COLUMNS = ("from_status", "to_status", "source", "at", "detail")
# The job columns a decision reads that can change after it (webhook_url is set once, at
# creation; images are never deleted): the write re-checks them under the row lock.
GUARDED = ("status", "provider_task_id", "submitted_at")

# Bind names are prefixed by the table they feed, since several tables share column names.
_SEEN, _EVENT, _SET, _ROW = "seen_", "ev_", "set_", "tr_"


def _param(prefix: str, table: Table, name: str) -> BindParameter[Any]:
    return bindparam(prefix + name, type_=table.c[name].type)


def parameters(job: JobState, plan: Plan, event: Mapping[str, Any]) -> dict[str, Any]:
    """The bind values of `statement_for(plan)`."""
    values: dict[str, Any] = {"job_id": job.id, **{_SEEN + name: getattr(job, name) for name in GUARDED}}
    values |= {_EVENT + name: value for name, value in event.items()}
    values |= {_SET + name: value for name, value in plan.changes.items()}
    if plan.transition is not None:
        values |= {_ROW + name: value for name, value in plan.transition.items()}
    if plan.images:
        values |= {
            "image_indexes": [out.index for out in plan.images],
            "image_urls": [out.url for out in plan.images],
            "image_types": [out.type for out in plan.images],
            "image_durations": [out.duration for out in plan.images],
            "image_created": plan.image_created,
        }
    if plan.queued:
        values["tasks"] = list(plan.queued)
    return values


def statement_for(plan: Plan) -> Select[Any]:
    return _statement(tuple(plan.changes), plan.moved, bool(plan.images), bool(plan.queued))


@cache
def _statement(change_columns: tuple[str, ...], transition: bool, images: bool, outbox: bool) -> Select[Any]:
    """Data-modifying CTEs, built once per shape (which columns change, which rows are written).

    `j` locks the job row if the columns the decision read are unchanged (a row a concurrent
    writer held is re-checked in its new version once that writer commits); the event INSERT
    reads `j`, and every other write reads the event's `ev` (INSERT ... ON CONFLICT DO NOTHING).
    So a changed job or a redelivered event (no row) writes nothing, and the statement commits
    whole or not at all. Rows back: one per outbox row written (`outbox_id`, `task`), or one
    without; each carries `unchanged` (j found the job as read) and `event_id` (None for a
    redelivery).
    """
    job_id = bindparam("job_id", type_=JOBS.c.id.type)
    j = (
        select(JOBS.c.id)
        .where(
            JOBS.c.id == job_id,
            *(JOBS.c[name].is_not_distinct_from(_param(_SEEN, JOBS, name)) for name in GUARDED),
        )
        .with_for_update()
        .cte("j")
    )
    event = select(*(_param(_EVENT, _EVENTS, name) for name in EVENT_COLUMNS)).select_from(j)
    ev = (
        postgresql.insert(_EVENTS)
        .from_select(list(EVENT_COLUMNS), event)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(_EVENTS.c.id)
        .cte("ev")
    )
    writes = []
    if transition:
        row = select(job_id, *(_param(_ROW, _TRANSITIONS, name) for name in TRANSITION_COLUMNS))
        writes.append(
            insert(_TRANSITIONS).from_select(["job_id", *TRANSITION_COLUMNS], row.select_from(ev)).cte("tr")
        )
    if images:
        report = (
            func.unnest(
                bindparam("image_indexes", type_=ARRAY(Integer)),
                bindparam("image_urls", type_=ARRAY(Text)),
                bindparam("image_types", type_=ARRAY(String)),
                bindparam("image_durations", type_=ARRAY(Float)),
            )
            .table_valued("index", "url", "type", "duration")
            .render_derived(name="report")
        )
        created = bindparam("image_created", type_=_IMAGES.c.provider_created_at.type)
        rows = (
            select(job_id, report.c.index, report.c.url, report.c.type, report.c.duration, created)
            .select_from(ev)
            .join(report, true())
        )
        writes.append(
            insert(_IMAGES)
            .from_select(["job_id", "index", "source_url", "type", "duration", "provider_created_at"], rows)
            .cte("im")
        )
    if change_columns:
        writes.append(
            update(JOBS)
            .where(JOBS.c.id == job_id, select(ev.c.id).exists())
            .values({name: _param(_SET, JOBS, name) for name in change_columns})
            .cte("up")
        )
    one = select(true().label("one")).subquery("one")
    unchanged = select(j.c.id).exists().label("unchanged")
    if not outbox:
        found = select(unchanged, ev.c.id.label("event_id"), null().label("outbox_id"), null().label("task"))
        return found.select_from(one.outerjoin(ev, true())).add_cte(*writes)
    tasks = (
        func.unnest(bindparam("tasks", type_=ARRAY(String)))
        .table_valued("task", with_ordinality="n")
        .render_derived(name="queued")
    )
    queued = (
        select(tasks.c.task, func.jsonb_build_array(job_id))
        .select_from(ev)
        .join(tasks, true())
        .order_by(tasks.c.n)
    )
    ob = (
        insert(_OUTBOX)
        .from_select(["task", "args"], queued)
        .returning(_OUTBOX.c.id, _OUTBOX.c.task)
        .cte("ob")
    )
    found = select(unchanged, ev.c.id.label("event_id"), ob.c.id.label("outbox_id"), ob.c.task)
    return found.select_from(one.outerjoin(ev, true()).outerjoin(ob, true())).add_cte(*writes)
