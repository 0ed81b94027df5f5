"""What a submit run writes when it does not end in a new provider task: the job given back to
the queue, ended unsubmitted or failed as unroutable; the account paused, resumed or denied a
model; the day's unit budget reserved and given back (worker/submit.py calls these)."""

from __future__ import annotations

import logging

from sqlalchemy import update

from kling import KlingError
from kling.errors import PermissionDenied
from models.base import utcnow
from models.db import session_scope
from models.enums import JobStatus
from models.job_control import END_REASONS
from models.outbox import DISPATCH_JOB
from models.statemachine import transition
from models.tables import Job
from worker import alerts
from worker.accounts import AccountState
from worker.budget import estimate
from worker.outcome import Outcome, Step, fail_job
from worker.routing import unserved
from worker.services import Services

log = logging.getLogger("worker.submit")  # one logger for the submit run's lines

CREATE_UNCERTAIN = "create_uncertain"
EXCEEDS_CONCURRENCY = "exceeds_concurrency"
# A job needing more slots than its tenant's max_slots (lowered after it was queued).
EXCEEDS_TENANT_SLOTS = "exceeds_tenant_max_slots"


def end_unsubmitted(svc: Services, job_id: str, token: str, ending: JobStatus) -> None:
    """The lookup found no task: the cancelled or expired job ends without one."""
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None and job.claim_token == token:
            transition(s, job, ending, source="worker", detail={"reason": END_REASONS[ending]})


def resume(svc: Services, account: str) -> None:
    """A create went through on a paused account: it works again."""
    if svc.account_gate.resume(account):
        log.warning("account %s resumed", account)
        alerts.account_changed(svc, alerts.RESUMED, AccountState(account, paused=False))


def reserve_units(svc: Services, name: str, job_id: str, slots: int) -> bool:
    """A budgeted account: reserve the task's estimated units of today's budget (worker/budget.py);
    False when that would pass it (the account is then paused with reason `budget` until 00:00 UTC).
    No Redis call for an account without a budget."""
    budget = svc.account(name).daily_unit_budget
    if not budget:
        return True
    units = estimate(slots, svc.units_per_slot(name))
    if svc.budget.reserve(name, job_id, units, budget, utcnow()):
        return True
    log.info("account %s: today's unit budget (%g) is used up", name, budget)
    return False


def unreserve(svc: Services, account: str, job_id: str) -> None:
    """The create made no task: give its units back to the day's budgets (account and tenant)."""
    if svc.account(account).daily_unit_budget:
        svc.budget.give_back(account, job_id, utcnow())
    svc.tenancy.give_back(job_id)


def unroutable(
    svc: Services,
    job_id: str,
    provider_name: str,
    *,
    kind: str,
    slots: int,
    model: str,
    too_big: int,
    denied: int,
) -> Outcome:
    """No account can ever take the job as it is: fail it with the reason."""
    if denied:
        message = f"no account may use model {model or 'default'} (1103 from every account serving it)"
        fail_job(svc, job_id, code=str(PermissionDenied.default_code), message=message)
        return Outcome(Step.FAILED, detail=message)
    if too_big:
        limit = max(svc.limiter_for(a.name).limit for a in svc.accounts)
        message = f"n={slots} needs more slots than KLING_CONCURRENCY={limit}"
        fail_job(svc, job_id, code=EXCEEDS_CONCURRENCY, message=message)
        return Outcome(Step.FAILED, detail=message)
    code, message = unserved(svc.accounts, provider_name, kind, legacy=svc.legacy)
    fail_job(svc, job_id, code=code, message=message)
    return Outcome(Step.FAILED, detail=message)


def forget_earlier_creates(svc: Services, job_id: str, token: str) -> None:
    """The account says the earlier creates made no task: only the one about to go out counts."""
    with session_scope(svc.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.claim_token == token)
            .values(create_attempts=1)
            .execution_options(synchronize_session=False)
        )


def give_back(svc: Services, job_id: str, token: str, *, refused: bool = False, forget: bool = False) -> None:
    """Back to the queue, unclaimed. `refused`: this run's create surely made no task, so it does
    not count (no lookup before the next one, and the job may go to another account); `forget`:
    a lookup found no task from any earlier create either."""
    values: dict[str, object] = {"claim_token": None, "claimed_until": None}
    if forget:
        values["create_attempts"] = 0
    elif refused:
        values["create_attempts"] = Job.create_attempts - 1
    with session_scope(svc.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.claim_token == token)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def pause_account(svc: Services, account: str, exc: KlingError) -> None:
    """An answer about the account (dry pack, arrears, IP whitelist, maintenance): every other
    job would be refused the same way, so pause submitting to it (and alert, the first time)."""
    if svc.account_gate.pause(account, exc.code, exc.message):
        log.warning("account %s paused: %s %s", account, exc.code, exc.message)
        alerts.account_changed(svc, alerts.PAUSED, svc.account_gate.state(account))
    else:
        log.info("account %s still paused: %s %s", account, exc.code, exc.message)


def refused_by_account(svc: Services, account: str, job_id: str, token: str, exc: KlingError) -> Outcome:
    """The account refused the create: no task was made. The job goes back to the queue, not failed."""
    svc.limiter_for(account).release(job_id)
    unreserve(svc, account, job_id)
    give_back(svc, job_id, token, refused=True)
    return Outcome(Step.WAIT, detail=f"account {account} paused: {exc.code}")


def deny_model(
    svc: Services, job_id: str, token: str, exc: KlingError, *, account: str, model: str, provider_name: str
) -> Outcome:
    """1103: this account may not use the model. Mark it so for a while and route the job to
    another account; fail it only when every account serving its provider refused the model."""
    svc.limiter_for(account).release(job_id)
    unreserve(svc, account, job_id)
    svc.account_gate.deny(account, model)
    log.warning("account %s may not use model %s: %s %s", account, model or "default", exc.code, exc.message)
    others = [
        a.name
        for a in svc.accounts
        if a.name != account and svc.serves(a, provider_name) and not svc.account_gate.denied(a.name, model)
    ]
    if not others:
        fail_job(svc, job_id, code=str(exc.code or 1103), message=exc.message)
        return Outcome(Step.FAILED, detail=str(exc))
    give_back(svc, job_id, token, refused=True)
    if svc.publish is not None:
        svc.publish(DISPATCH_JOB, [job_id])  # to another account now, not at the next pump
    return Outcome(Step.WAIT, detail=f"account {account} may not use {model}")
