"""Account faults: the resource pack runs dry mid-run and is topped up (`pack-runs-dry`).

Kling answers 1102 while a pack is empty; that describes the account, not the job, so the worker
must pause the account (jobs stay queued), probe at most once per ACCOUNT_PROBE_SECONDS, and
drain the queue after the top-up: no job failed by an account code, no duplicate task.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from chaos.procs import wait_until
from chaos.stack import ChaosStack
from models.db import session_scope
from models.tables import Job

ACCOUNT = "default"
IN_FLIGHT = ("submitted", "processing", "succeeded")
# Codes about the account (KLING_NOTES.md): a job failed with one of them was failed wrongly.
ACCOUNT_CODES = ("1100", "1101", "1102", "1103", "1304", "5001")


def refused(stack: ChaosStack, code: int) -> int:
    """Creates the simulator's default account refused with `code` so far."""
    counts: dict[str, Any] = stack.sim.account(ACCOUNT)["refused_by_code"]
    return int(counts.get(str(code), 0))


def probe_bound(dry_seconds: float, probe_seconds: float, senders: int) -> int:
    """Most 1102 answers a well-behaved stack gets while dry: the creates already on their way when
    the pack ran out (one per worker thread), then one probe per probe interval."""
    return senders + int(dry_seconds // probe_seconds) + 1


def failed_on_account(stack: ChaosStack, ids: list[str]) -> list[str]:
    with session_scope(stack.sessions) as s:
        rows = s.execute(
            select(Job.id, Job.error_code).where(Job.id.in_(ids), Job.error_code.in_(ACCOUNT_CODES))
        )
        return [f"job {job_id} failed with account code {code}" for job_id, code in rows]


class PackRunsDry:
    """Inject: dry the pack once jobs are in flight, keep it dry, top it up. After: check the jobs."""

    def __init__(self) -> None:
        self.before_1303 = 0

    def inject(self, stack: ChaosStack, dry_seconds: float, ids: list[str], notes: list[str]) -> list[str]:
        t = stack.tuning
        self.before_1303 = refused(stack, 1303)
        wait_until(lambda: stack.count_status(ids, *IN_FLIGHT) > 0, timeout=60, what="jobs in flight")
        before = refused(stack, 1102)
        stack.sim.set_pack(ACCOUNT, status="runOut")
        try:
            queued = stack.count_status(ids, "queued")
            time.sleep(dry_seconds)  # the outage itself
            during = refused(stack, 1102) - before
        finally:
            # Topped up whatever happened: the next scenario must find a working account.
            stack.sim.set_pack(ACCOUNT, status="online")
        bound = probe_bound(dry_seconds, t.account_probe_seconds, t.workers * t.worker_concurrency)
        notes.append(
            f"pack dry {dry_seconds:.0f} s with {queued} job(s) queued, then topped up; "
            f"{during} create(s) answered 1102 while dry (at most {bound}: "
            f"ACCOUNT_PROBE_SECONDS={t.account_probe_seconds:g})"
        )
        problems = []
        if during < 1:
            problems.append("no create reached the dry pack: the fault was not exercised")
        if during > bound:
            problems.append(f"{during} creates answered 1102 while dry: hammering (more than {bound})")
        return problems

    def after(self, stack: ChaosStack, ids: list[str], notes: list[str], problems: list[str]) -> None:
        problems += failed_on_account(stack, ids)
        over = refused(stack, 1303) - self.before_1303
        acct = stack.sim.account(ACCOUNT)
        notes.append(
            f"account max slots in use {acct['max_slots_in_use']}/{stack.tuning.concurrency}; "
            f"{over} create(s) answered 1303"
        )
        if acct["max_slots_in_use"] > stack.tuning.concurrency or over:
            problems.append(f"over the concurrency: {over} create(s) answered 1303")
