"""Account faults: the resource pack runs dry mid-run and is topped up (`pack-runs-dry`).

Kling answers 1102 while a pack is empty; that describes the account, not the job, so the worker
must pause the account (jobs stay queued), probe at most once per ACCOUNT_PROBE_SECONDS, and
drain the queue after the top-up: no job failed by an account code, no duplicate task.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import func, select

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


class TwoAccounts:
    """`two-accounts`: the service reads two accounts from KLING_ACCOUNTS_FILE; the first one's pack
    runs dry for good after a few creates while faults (5000, 1302, dropped connections after a
    create, lost and repeated callbacks) go on. Every job must be archived on the second, none
    created on both, neither account over its concurrency, none failed by an account code."""

    DRY_AFTER_CREATES = 3

    def __init__(self) -> None:
        self.concurrency: dict[str, int] = {}

    def setup(self, stack: ChaosStack) -> None:
        total = stack.tuning.concurrency
        self.concurrency = {"first": max(2, total // 4), "second": max(2, total // 2)}
        tables = []
        for name, slots in self.concurrency.items():
            access, secret = f"chaos-{name}-{secrets.token_hex(6)}", secrets.token_hex(32)
            stack.sim.add_account(name, access_key=access, secret_key=secret, concurrency=slots, units=10**9)
            tables.append(
                f'[[account]]\nname = "{name}"\nprovider = "kling"\napi_base = "{stack.sim_url}"\n'
                f'access_key = "{access}"\nsecret_key = "{secret}"\nconcurrency = {slots}\n'
            )
        path = stack.root / "accounts.toml"
        path.write_text("\n".join(tables))
        stack.reconfigure({"KLING_ACCOUNTS_FILE": str(path)})

    def inject(self, stack: ChaosStack, p: Any, ids: list[str], notes: list[str]) -> None:
        wait_until(
            lambda: int(stack.sim.account("first")["creates"]) >= self.DRY_AFTER_CREATES,
            timeout=60,
            what=f"{self.DRY_AFTER_CREATES} creates on the first account",
        )
        stack.sim.set_pack("first", status="runOut")  # dry for good
        notes.append(f"first account's pack dry for good after {self.DRY_AFTER_CREATES} creates")

    def after(self, stack: ChaosStack, ids: list[str], notes: list[str], problems: list[str]) -> None:
        problems += failed_on_account(stack, ids)
        with session_scope(stack.sessions) as s:
            query = select(Job.account, func.count()).where(Job.id.in_(ids)).group_by(Job.account)
            by_account = dict(s.execute(query).all())
        parts = []
        for name, slots in self.concurrency.items():
            acct = stack.sim.account(name)
            refused_codes: dict[str, int] = acct["refused_by_code"]
            parts.append(
                f"{name}: {by_account.get(name, 0)} job(s), {acct['creates']} create(s), max slots "
                f"{acct['max_slots_in_use']}/{slots}, 1102 x{refused_codes.get('1102', 0)}, "
                f"1303 x{refused_codes.get('1303', 0)}"
            )
            if int(acct["max_slots_in_use"]) > slots or refused_codes.get("1303"):
                problems.append(f"account {name} went over its concurrency ({slots})")
        notes.append("; ".join(parts))
        # Provider tasks on both accounts for one job would show as duplicates in the stack's check.
        stack.sim.set_pack("first", status="online")
