"""Slots: when a provider task ends, free its slots and dispatch the queued jobs that now fit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Row, Select, literal_column, select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope, walk_index_in_order
from models.enums import JobStatus
from models.logging import log_context
from models.outbox import DISPATCH_JOB, RELEASE_SLOTS, QueuedTask
from models.tables import Job
from worker.claims import unclaimed
from worker.outbox import publish_rows
from worker.routing import Queued, fill, pinned_account
from worker.services import Services
from worker.tenancy import queued_heads
from worker.tenant_share import accounts_owed, fair_order, owed

if TYPE_CHECKING:
    from celery import Celery

    from worker.tasks import KlingTask, Schedule

log = logging.getLogger(__name__)


def release_slots(
    svc: Services, job_id: str, *, durable: bool = False, keep_first: list[str] | None = None
) -> list[str]:
    """The provider task ended: free its slots and dispatch the next waiting jobs.

    The webhook calls this right after a final callback and, when it went through, marks the
    task's `release_slots` outbox row done. A call that finds the lease gone does not pump again:
    a second pump would dispatch the same waiting job twice while its first message is queued.
    The `release_slots` task (`durable=True`) runs only when that did not happen (or for a report
    a poller applied), so it pumps even when the lease is already gone: an earlier release whose
    pump failed (broker or database down) must not leave the freed slots idle.
    """
    if svc.budgeted or svc.tenancy.budgeted:
        _settle_units(svc, job_id)
    if not svc.release(job_id) and not durable:
        return []
    return pump(svc, keep_first=keep_first)


def _settle_units(svc: Services, job_id: str) -> None:
    """The task ended: its real units replace its reservation in the account's and the tenant's
    daily budgets (one query, only in deployments with a budgeted account or tenant)."""
    with session_scope(svc.sessions) as s:
        row = s.execute(select(Job.account, Job.units, Job.tenant).where(Job.id == job_id)).one_or_none()
    if row is None:
        return
    if row.account and svc.account(row.account).daily_unit_budget:
        svc.budget.settle(row.account, job_id, row.units, utcnow())
    svc.tenancy.settle(row.tenant, job_id, row.units)


def hand_off_slots(
    svc: Services, job_id: str, rows: Sequence[QueuedTask], *, keep_first: list[str] | None = None
) -> None:
    """Right after a final provider report committed: free the task's slots for the next jobs,
    then publish the outbox rows the report wrote. Its `release_slots` row is marked done without
    being sent only when the release here went through (that task stays the durable path).
    `keep_first`: see `pump`."""
    try:
        release_slots(svc, job_id, keep_first=keep_first)
        done: tuple[str, ...] = (RELEASE_SLOTS,)
    except Exception as exc:  # noqa: BLE001  (the worker's release_slots task will do it)
        log.warning("releasing slots after the report failed, a worker will: %s", type(exc).__name__)
        done = ()
    if svc.publish is not None:
        publish_rows(svc.sessions, svc.publish, rows, done=done)


def queued_head(now: datetime, limit: int) -> Select[str, int, str, str, str | None, int]:
    """The first `limit` queued jobs in queue order (arrival moved by priority, models/priorities.py)
    no run owns, by the partial `ix_jobs_queue` index: what the pump places them by (id, slots,
    provider, kind, account, create_attempts). The status is a literal: a bound parameter would
    keep a generic plan from proving the index's `status = 'queued'`."""
    return (
        select(*QUEUED_COLUMNS)
        .where(Job.status == literal_column("'queued'"), unclaimed(now))
        .order_by(Job.queue_at, Job.id)
        .limit(limit)
    )


QUEUED_COLUMNS = (Job.id, Job.slots, Job.provider, Job.kind, Job.account, Job.create_attempts)


def _queued(row: Row[str, int, str, str, str | None, int]) -> Queued:
    return Queued(row.slots, row.provider, row.kind, pinned_account(row.account, row.create_attempts))


def pump(svc: Services, *, keep_first: list[str] | None = None) -> list[str]:
    """Dispatch submit for unclaimed queued jobs that fit in the free slots; returns their ids.

    Candidates go in the limiter's own serving order (`SlotLimiter.serving_order`: starving waiters,
    then the queue's head largest first, then the rest of its queue), then the other queued jobs
    oldest first, so the jobs dispatched are the ones the limiter's fairness rule will admit.
    Each is placed in the free slots of an account that may take it (`worker.routing.fill`: its
    provider and kind, or the account it is pinned to). A queued job that holds a lease but no
    live claim lost its submit run (worker killed): it is dispatched again and re-uses its own
    lease. Claimed jobs are left alone: a run owns them, and so are jobs another pump sent in
    the last few seconds (`worker.dispatch_marks`): their messages are on their way.

    `keep_first` (a worker's own run): the first job is appended to it instead of published, for
    that process to submit next (one message and one hop fewer); a process that dies first loses
    nothing, as the job stays queued and its mark lapses.
    """
    if svc.publish is None:
        return []
    # Per account: its free slots, its leases, its wait queue (accounts disabled by the operator
    # count no free slots; their pinned jobs are re-dispatched through their leases).
    disabled = svc.disabled_accounts() if len(svc.account_names) > 1 else frozenset()
    holders: dict[str, int] = {}
    waiting: list[str] = []
    waiting_by_account: dict[str, list[str]] = {}
    free: dict[str, int] = {}
    limit = 0
    limiters = svc.limiters()
    for name, limiter in limiters.items():
        held = limiter.holders()
        holders.update(held)
        limit += limiter.limit
        if name not in disabled:
            free[name] = limiter.limit - sum(held.values())
        # In the order the limiter serves them: what the pump sends is what it admits.
        waiting_by_account[name] = limiter.serving_order(max(100, limiter.limit * 4))
        waiting += [w for w in waiting_by_account[name] if w not in waiting]
    # Only the head of the queue: free slots are at most `limit`, and with a backlog of 20,000
    # reading the whole queue (and querying all of it) on every release made draining quadratic.
    candidates = max(100, limit * 4)
    now = utcnow()
    fair: list[str] | None = None
    with session_scope(svc.sessions) as s:
        walk_index_in_order(s)
        if svc.tenancy.active:
            fair, queued, waiting = _tenant_candidates(
                svc, s, holders, waiting, free=free, now=now, candidates=candidates
            )
        else:
            queued = {row.id: _queued(row) for row in s.execute(queued_head(now, candidates))}
        missing = [w for w in waiting if w not in queued]
        if missing:
            among = (Job.id.in_(missing), Job.status == JobStatus.QUEUED, unclaimed(now))
            rows = s.execute(select(*QUEUED_COLUMNS).where(*among))
            queued.update({row.id: _queued(row) for row in rows})
    waiting_set = set(waiting)
    rest = queued if fair is None else fair
    order = [w for w in waiting if w in queued] + [j for j in rest if j not in waiting_set]
    dispatched = fill(order, queued, free, svc.accounts, holders, legacy=svc.legacy)
    # A job another pump sent lately keeps its place: its message is on its way.
    sent = svc.dispatch_marks.take(dispatched)
    for i, job_id in enumerate(sent):
        if i == 0 and keep_first is not None:
            keep_first.append(job_id)
            continue
        try:
            svc.publish(DISPATCH_JOB, [job_id])
        except Exception:
            for unsent in sent[i:]:  # not on their way: the next pump must be free to send them
                svc.dispatch_marks.clear(unsent)
            raise
    # A waiter too big for the free slots is not dispatched, so it does not ask again: vouch for
    # it (it is queued), or it would lapse and lose its place and its starvation clock.
    left_waiting = waiting_set.difference(dispatched).intersection(queued)
    for name, limiter in limiters.items():
        if kept := [w for w in waiting_by_account[name] if w in left_waiting]:
            limiter.keep_waiting(kept)
    return sent


def _tenant_candidates(
    svc: Services,
    s: Session,
    holders: dict[str, int],
    waiting: list[str],
    *,
    free: dict[str, int],
    now: datetime,
    candidates: int,
) -> tuple[list[str], dict[str, Queued], list[str]]:
    """With tenants: each tenant's queue head, in the fair order (worker/tenant_share.py).
    Waiters of tenants not owed slots while another tenant is leave the wait queues: their place
    there would reserve the slots the owed tenant's jobs are dispatched for."""
    picture = svc.tenancy.picture(holders)
    # Per tenant, a head that can fill every free slot twice over: one indexed query per tenant.
    per_tenant = min(candidates, max(20, sum(free.values()) * 2))
    heads = queued_heads(s, svc.tenancy.with_queued_jobs(), now, per_tenant, QUEUED_COLUMNS)
    queued = {row.id: _queued(row) for rows in heads.values() for row in rows}
    # First the jobs that must run whatever their tenant's state: holding a lease (their run
    # died: they re-use it) or maybe created already (only a lookup can tell). Then the others
    # in the fair order, none of a tenant out of today's units.
    first = [r.id for rows in heads.values() for r in rows if r.id in holders or r.create_attempts > 0]
    startable = svc.tenancy.startable()
    rest = {
        t: [(r.id, r.slots) for r in rows if r.id not in first] for t, rows in heads.items() if t in startable
    }
    order = first + fair_order(rest, picture)
    owed_now = owed(picture)
    if waiting:
        # Out of the queues: waiters of a tenant out of today's units (wherever they wait), and of
        # a tenant not owed slots where an owed tenant wants them.
        tenants, limits = svc.tenancy.tenants_of(waiting), svc.tenancy.limits()
        where = accounts_owed(picture, owed_now)
        behind: set[str] = set()
        for job_id in waiting:
            tenant = tenants.get(job_id)
            if job_id in holders or tenant is None:
                continue
            if svc.tenancy.out_of_units(tenant, limits, now):
                svc.tenancy.leave_queues(job_id)
                behind.add(job_id)
            elif owed_now and tenant not in owed_now and where != frozenset():
                svc.tenancy.leave_queues(job_id, where)
                behind.add(job_id)
        waiting = [w for w in waiting if w not in behind]
    return order, queued, waiting


def register(app: Celery) -> Schedule:
    """The release task; the reconciler pumps on its own schedule (worker.repair)."""
    # Imported here, not at the top: the web app imports this module without loading Celery.
    from worker.tasks import RELEASE_TASK, KlingTask

    @app.task(bind=True, base=KlingTask, shared=False, name=RELEASE_TASK.name)
    def release_slots_task(self: KlingTask, job_id: str) -> list[str]:
        with log_context(job_id=job_id):
            return release_slots(self.services, job_id, durable=True)

    return {}
