"""Reads on each slot release stay O(free slots) when PostgreSQL's statistics lag a burst."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import walk_index_in_order
from models.statemachine import QUEUE_DEPTH_FOR_PUMP, queued_ahead
from models.tables import Job, of_tenant
from models.tenants import create_tenant
from worker.slots import queued_head


def _plan(session: Session, stmt: Select[*tuple[Any, ...]]) -> str:
    compiled = stmt.compile(dialect=session.get_bind().dialect)
    rows = session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars()
    return "\n".join(rows)


def _generic_plan(session: Session, stmt: Select[*tuple[Any, ...]]) -> str:
    """The plan of `stmt` prepared with its parameters unknown (as psycopg prepares a statement
    run often), forced generic: what the planner can use whatever the values."""
    compiled = stmt.compile(dialect=session.get_bind().dialect)
    sql, values = compiled.string, []
    for i, (name, value) in enumerate(compiled.params.items(), start=1):
        sql = sql.replace(f"%({name})s", f"${i}")
        values.append(str(value) if isinstance(value, int | float) else f"'{value}'")
    connection = session.connection()
    connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    connection.exec_driver_sql(f"PREPARE plan_check AS {sql}")
    try:
        rows = connection.exec_driver_sql(f"EXPLAIN EXECUTE plan_check({', '.join(values)})").scalars()
        return "\n".join(rows)
    finally:
        connection.exec_driver_sql("DEALLOCATE plan_check")


def _insert_jobs(session: Session, first: int, count: int, status: str) -> None:
    session.execute(
        text(
            "INSERT INTO jobs (id, provider, params, status, slots, created_at, queue_at, updated_at,"
            " create_attempts) SELECT 'plan-' || g, 'kling', '{}'::jsonb, :status, 1,"
            " now() + g * interval '1 ms', now() + g * interval '1 ms', now(), 0"
            " FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) g"
        ),
        {"status": status, "first": first, "last": first + count - 1},
    )


# First in this file: the statistics ANALYZE writes outlive the rollback; the tests below set
# their own after it.
def test_a_new_jobs_count_of_the_queue_ahead_walks_a_queue_index(db_session: Session) -> None:
    """Every create counts (up to QUEUE_DEPTH_FOR_PUMP) the queued jobs of its tenant ahead of it:
    an ordered walk of a partial queue index that stops there, never a scan of the table nor of
    every queued row, for the big tenant and for a small one behind it, even in a generic plan."""
    create_tenant(db_session, "acme")
    _insert_jobs(db_session, 0, 20_000, "archived")
    _insert_jobs(db_session, 20_000, 3000, "queued")
    db_session.execute(text("UPDATE jobs SET tenant = 'acme' WHERE id LIKE 'plan-2200%'"))
    db_session.execute(text("ANALYZE jobs"))
    later = utcnow() + timedelta(hours=1)
    for tenant, queued in (("default", QUEUE_DEPTH_FOR_PUMP), ("acme", 10)):
        ahead = queued_ahead(tenant, later, QUEUE_DEPTH_FOR_PUMP)
        for plan in (_plan(db_session, ahead), _generic_plan(db_session, ahead)):
            assert "Scan using ix_jobs_" in plan and "_queue on jobs" in plan, plan
            assert not any(step in plan for step in ("Seq Scan", "Bitmap", "Sort")), plan
        assert db_session.scalar(ahead) == queued


def test_the_pump_walks_the_queue_index_whatever_the_statistics_say(
    db_session: Session,
) -> None:
    # Statistics taken while 20 of 2,020 jobs were queued; then a burst queues 5,000 more.
    _insert_jobs(db_session, 0, 2000, "archived")
    _insert_jobs(db_session, 2000, 20, "queued")
    db_session.execute(text("ANALYZE jobs"))
    _insert_jobs(db_session, 2020, 5000, "queued")
    # Costs as on a store where random reads are dear, so the planner's choice does not hinge on
    # the table's physical layout: with the statistics above it then always sorts.
    db_session.execute(text("SET LOCAL random_page_cost = 40"))
    head = queued_head(utcnow() - timedelta(seconds=1), 100)

    # On those statistics PostgreSQL plans to fetch every queued row and sort them all (the trap).
    assert "Sort" in _plan(db_session, head)

    walk_index_in_order(db_session)
    plan = _plan(db_session, head)
    assert "Sort" not in plan and "Bitmap" not in plan
    # An ordered walk of the queued rows only, stopping at the limit.
    # The partial index holds only queued rows: nothing else is read.
    assert "Index Scan using ix_jobs_queue on jobs" in plan
    assert len(db_session.execute(head).all()) == 100


def test_a_tenants_list_walks_its_partial_index_even_in_a_generic_plan(db_session: Session) -> None:
    """ix_jobs_tenant_created_at_id holds no `default` rows (a deployment without tenants pays
    nothing for it); `of_tenant` says so in the query, so a prepared statement's generic plan,
    which knows no parameter's value, may use it too."""
    create_tenant(db_session, "acme")
    _insert_jobs(db_session, 0, 5000, "archived")
    db_session.execute(text("UPDATE jobs SET tenant = 'acme' WHERE id LIKE 'plan-1%'"))
    db_session.execute(text("ANALYZE jobs"))
    listing = select(Job.id).where(of_tenant("acme")).order_by(Job.created_at.desc(), Job.id.desc()).limit(50)
    assert "ix_jobs_tenant_created_at_id" in _plan(db_session, listing)
    assert "ix_jobs_tenant_created_at_id" in _generic_plan(db_session, listing)
    assert len(db_session.execute(listing).all()) == 50
