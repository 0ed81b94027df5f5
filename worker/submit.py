"""Submit: create the provider task for a queued job, at most once, within the account's slots.

`submit_job` takes a `Services` and an id, opens its own short transactions, never holds one open
across a provider call, and is safe to run twice; its Celery task is a thin wrapper (`register`).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Literal

from sqlalchemy import update

from kling import KlingError, Task, TaskStatus, ValidationError
from kling.client import TaskProvider
from kling.errors import ConcurrencyLimitExceeded, RateLimited
from kling.http import backoff, is_ambiguous, is_not_found
from kling.kinds import TaskKind, kind_for
from models.base import utcnow
from models.db import session_scope
from models.enums import JobStatus
from models.job_control import END_REASONS, unsubmitted_end
from models.logging import log_context
from models.outbox import DISPATCH_JOB
from models.priorities import queue_ahead
from models.statemachine import TaskMismatch, apply_provider_task, transition
from models.tables import Job
from models.tokens import callback_url
from worker import metrics
from worker.accounts import denies_model, pauses_account
from worker.claims import keep_claim, take_claim
from worker.limiter import SlotLimiter
from worker.outcome import Outcome, Step, fail_job
from worker.provider import ProviderNotConfigured
from worker.routing import pinned_account, route
from worker.services import Services
from worker.submit_outcomes import (
    CREATE_UNCERTAIN,
    EXCEEDS_TENANT_SLOTS,
    deny_model,
    end_unsubmitted,
    forget_earlier_creates,
    give_back,
    pause_account,
    refused_by_account,
    reserve_units,
    resume,
    unreserve,
    unroutable,
)

if TYPE_CHECKING:
    from celery import Celery

    from worker.tasks import Schedule

log = logging.getLogger(__name__)


class Lookup(Enum):
    NOT_FOUND = "not found"  # the provider surely has no task for the job: creating it cannot bill twice


def submit_job(svc: Services, job_id: str, *, attempt: int = 0, claim: str | None = None) -> Outcome:
    """Create the provider task for a queued job, at most once (docs/architecture.md rules 1 and 3)."""
    try:
        outcome = _submit(svc, job_id, attempt=attempt, claim=claim)
    except BaseException:
        svc.dispatch_marks.clear(job_id)  # still queued: the next pump may send it again
        raise
    if outcome.step is Step.WAIT:
        svc.dispatch_marks.clear(job_id)  # no slot this time: the next pump may send it again
    return outcome


def _submit(svc: Services, job_id: str, *, attempt: int, claim: str | None) -> Outcome:
    disabled = svc.disabled_accounts()  # cached per process: a query every few seconds, not per job
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("submit: job %s does not exist", job_id)
            return Outcome(Step.DONE, detail="no such job")
        if job.status != JobStatus.QUEUED:
            return Outcome(Step.DONE, detail=f"already {job.status}")
        token = take_claim(s, job_id, JobStatus.QUEUED, claim, svc.settings.stuck_submit_seconds)
        if token is None:
            return Outcome(Step.DONE, detail="another run owns this job")
        params, slots, provider_name, kind_name = dict(job.params), job.slots, job.provider, job.kind
        ahead = queue_ahead(job.priority)
        s.refresh(job)
        tried_before = job.create_attempts > 0
        # Cancelled or past its deadline: ended here, unless a create may already exist (then
        # the lookup below decides: a task found runs on, none found ends the job).
        ending = unsubmitted_end(job.cancel_requested_at, job.deadline_at, utcnow())
        if ending is not None and not tried_before:
            transition(s, job, ending, source="worker", detail={"reason": END_REASONS[ending]})
            s.commit()
            svc.release(job_id)  # out of the wait queues an earlier run joined
            return Outcome(Step.DONE, detail=ending.value)
        plan = route(
            svc.accounts,
            provider_name,
            kind=kind_name,
            pinned=pinned_account(job.account, job.create_attempts),
            disabled=disabled,
            legacy=svc.legacy,
        )
        tenant = job.tenant
        oversize = None if tried_before else svc.tenancy.too_big(tenant, slots)
        if oversize is not None:
            s.rollback()
            fail_job(svc, job_id, code=EXCEEDS_TENANT_SLOTS, message=oversize)
            svc.release(job_id)  # out of the wait queues an earlier run joined
            return Outcome(Step.FAILED, detail=oversize)
        # Another tenant is owed slots on these accounts, or this one is at its max_slots: wait,
        # reserving nothing.
        held_back = None if tried_before else svc.tenancy.wait_reason(job_id, tenant, slots, plan.accounts)
        if held_back is not None:
            s.rollback()
            svc.tenancy.leave_queues(job_id)
            return Outcome(Step.WAIT, detail=held_back)
        model = str(params.get("model_name") or "")
        account, probing, lookup_only, provider = "", False, False, None
        unusable: Exception | None = None
        too_big = denied = 0
        try:
            kind = _checked_kind(kind_name, params, provider_name)
            for name in plan.accounts:
                provider = svc.provider_for_account(name, provider_name)
        except (ProviderNotConfigured, ValidationError) as exc:
            unusable = exc
        tried: list[str] = []
        refused_on: list[str] = []  # accounts that had no slots for it
        for name in plan.accounts if unusable is None else ():
            limiter = svc.limiter_for(name)
            if slots > limiter.limit:
                if plan.pinned:
                    # Its account's concurrency was lowered below the job: no create may go out
                    # there, but the earlier one must still be looked up (it may be running).
                    account, lookup_only = name, True
                    break
                too_big += 1
                continue
            tried.append(name)
            if not limiter.acquire(job_id, slots, ahead=ahead):
                refused_on.append(name)
                continue
            # One more Redis call under the row lock (two while paused). A paused account
            # sends one create per ACCOUNT_PROBE_SECONDS: every other run counts no attempt,
            # gives slots and claim back, and the reconciler's pump dispatches it again.
            # A run whose earlier create may have gone through looks it up first, holding
            # its slots (that task may be running), and takes its probe turn only after.
            paused, refused_model = svc.account_gate.check(name, model)
            if refused_model and not plan.pinned:
                denied += 1
                limiter.release(job_id)
                continue
            probing = paused
            if probing and not tried_before and not svc.account_gate.probe_turn(name):
                limiter.release(job_id)
                continue
            if not reserve_units(svc, name, job_id, slots):
                limiter.release(job_id)
                continue
            held_back = _tenant_refusal(svc, job_id, tenant, slots, name, tried_before=tried_before)
            if held_back is not None:
                unreserve(svc, name, job_id)
                limiter.release(job_id)
                break
            account = name
            break
        # Taken somewhere: leave the other accounts' wait queues, those an earlier run joined too
        # (a job still waiting keeps its place in every queue it joined, for their fairness rule;
        # left there once taken, it would go on reserving another account's slots).
        for name in plan.accounts if account and len(plan.accounts) > 1 else ():
            if name != account:
                svc.limiter_for(name).release(job_id)
        if held_back is not None:
            s.rollback()
            svc.tenancy.leave_queues(job_id)
            return Outcome(Step.WAIT, detail=held_back)
        # Its tenant wants slots on these accounts: waits for them, or got them (worker/tenancy.py).
        svc.tenancy.wanted(tenant, [*refused_on, account] if account else refused_on)
        if unusable is None and not account:
            if plan.accounts and too_big + denied < len(plan.accounts):
                # No slots (the common case while a batch waits) or every account paused: give the
                # claim back by not committing it, one transaction instead of a claim and an
                # unclaim. The row lock is held only for the limiters' Redis calls.
                s.rollback()
                return Outcome(Step.WAIT)
            if plan.pinned:
                # Its earlier create may exist on an account no longer configured: only that
                # account can tell, so the job waits for it rather than risk a second bill.
                s.rollback()
                log.warning(
                    "job %s waits: its earlier create may exist on account %s, which is not "
                    "configured; add it back to KLING_ACCOUNTS_FILE to settle it",
                    job_id,
                    job.account,
                )
                return Outcome(Step.WAIT, detail=f"account {job.account} is not configured")
            if plan.serving > len(plan.accounts):
                # A disabled account serving the job may take it once enabled again.
                s.rollback()
                return Outcome(Step.WAIT, detail="only disabled accounts can take it")
        if account and not lookup_only:
            provider = svc.provider_for_account(account, provider_name)
            # A create may go out from here on: count it, and the account it goes to, in the
            # claim's commit. Nothing but local checks runs between this commit and the create.
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(create_attempts=Job.create_attempts + 1, account=account)
            )

    if isinstance(unusable, ProviderNotConfigured):
        fail_job(svc, job_id, code="provider_not_configured", message=f"{provider_name}: {unusable}")
        return Outcome(Step.FAILED, detail=str(unusable))
    if unusable is not None:
        # The API validates before queueing; this only happens for rows written by hand.
        fail_job(svc, job_id, code="invalid_request", message=str(unusable))
        return Outcome(Step.FAILED, detail=str(unusable))
    hold = svc.settings.stuck_submit_seconds
    if not account:
        return unroutable(
            svc,
            job_id,
            provider_name,
            kind=kind_name,
            slots=slots,
            model=model,
            too_big=too_big,
            denied=denied,
        )
    provider = svc.provider_for_account(account, provider_name)
    limiter = svc.limiter_for(account)

    if tried_before:
        # An earlier run sent a create and we never learned its fate: ask before creating again.
        found = _find_existing(svc, provider, job_id, token, None, kind=kind, limiter=limiter)
        if isinstance(found, Task):
            # No resume here: the task found may predate the pause (only this run's own create
            # proves the account works again, below).
            _record_submitted(svc, job_id, found)
            return Outcome(Step.DONE, detail=found.task_id)
        if isinstance(found, Outcome):
            return found
        if ending is not None:
            limiter.release(job_id)
            unreserve(svc, account, job_id)
            end_unsubmitted(svc, job_id, token, ending)
            return Outcome(Step.DONE, detail=ending.value)
        if lookup_only:
            # Surely not created, and no create may go out on so small an account: the job is
            # free to go to any account that fits it.
            limiter.release(job_id)
            unreserve(svc, account, job_id)
            give_back(svc, job_id, token, forget=True)
            if svc.publish is not None:
                svc.publish(DISPATCH_JOB, [job_id])
            return Outcome(Step.WAIT, detail=f"no task on {account}; too small to create it there")
        if probing and not svc.account_gate.probe_turn(account):
            # Paused and not this run's probe turn. It stays pinned (a create answered 5001 may
            # still be processed late; another account could not deduplicate it) and tries again,
            # lookup first, at the next probe turn: holding its claim, not its slots.
            limiter.release(job_id)
            unreserve(svc, account, job_id)
            forget_earlier_creates(svc, job_id, token)  # none found: this run sent none either
            return keep_claim(svc, job_id, token, svc.account_gate.probe_seconds, hold)
        # Surely not created: a new create goes out, so its tenant's caps apply as to any.
        held_back = _tenant_refusal(svc, job_id, tenant, slots, account, tried_before=False)
        if held_back is not None:
            limiter.release(job_id)
            unreserve(svc, account, job_id)
            give_back(svc, job_id, token, forget=True)
            svc.tenancy.leave_queues(job_id)
            return Outcome(Step.WAIT, detail=held_back)
        # Count only the create below, so a refusal of it (a dry pack) frees the job to go to
        # another account instead of pinning it here.
        forget_earlier_creates(svc, job_id, token)

    settings = svc.settings
    cb_url = None
    if settings.public_base_url and settings.callback_secret:
        cb_url = callback_url(settings.public_base_url, settings.callback_secret.get_secret_value(), job_id)

    try:
        task = provider.create_task(kind, params, external_task_id=job_id, callback_url=cb_url)
    except (RateLimited, ConcurrencyLimitExceeded) as exc:
        # Not processed: give the slots back and try again later; the job stays queued.
        metrics.provider_errors.labels(code=str(exc.code)).inc()
        limiter.release(job_id)
        # Rate and concurrency limits clear within seconds: retry soon, whatever the attempt count.
        retry_in = backoff(attempt, base=0.5, cap=10, retry_after=exc.retry_after)
        return keep_claim(svc, job_id, token, retry_in, hold)
    except KlingError as exc:
        metrics.provider_errors.labels(code=str(exc.code or exc.http_status or "network")).inc()
        if pauses_account(exc):
            pause_account(svc, account, exc)
            if not is_ambiguous(exc):
                return refused_by_account(svc, account, job_id, token, exc)
            # 5001 (maintenance) is a 5xx: the create may have gone through. Like any ambiguous
            # answer, the job holds its slots and looks the task up; once surely not created,
            # it waits for the account's probe turn (above) or goes to another account; found,
            # the account works after all and resumes below.
            probing = True
        if denies_model(exc):
            return deny_model(
                svc, job_id, token, exc, account=account, model=model, provider_name=provider_name
            )
        if not is_ambiguous(exc):
            limiter.release(job_id)
            unreserve(svc, account, job_id)
            fail_job(
                svc, job_id, code=str(exc.code or exc.http_status or "provider_error"), message=exc.message
            )
            return Outcome(Step.FAILED, detail=str(exc))
        found = _find_existing(svc, provider, job_id, token, exc, kind=kind, limiter=limiter)
        if isinstance(found, Outcome):
            return found
        if found is Lookup.NOT_FOUND:
            # Not found right after an ambiguous failure: retry shortly; the next run looks up first.
            return keep_claim(svc, job_id, token, 0.5 + backoff(0, base=0.5, cap=60.0), hold)
        task = found

    if probing:
        resume(svc, account)
    _record_submitted(svc, job_id, task)
    return Outcome(Step.DONE, detail=task.task_id)


def _tenant_refusal(
    svc: Services, job_id: str, tenant: str, slots: int, account: str, *, tried_before: bool
) -> str | None:
    """Once granted an account's slots: the tenant's `max_slots` (re-counted with this lease) and
    its daily units. A job whose earlier create may exist is not held back: it must be looked up."""
    if tried_before or not svc.tenancy.active:
        return None
    if svc.tenancy.over_cap(job_id, tenant):
        return f"tenant {tenant} is at its max_slots"
    if not svc.tenancy.reserve_units(tenant, job_id, slots, account):
        return f"tenant {tenant} has used today's units (daily_units)"
    return None


def _checked_kind(name: str, params: dict[str, object], provider_name: str) -> TaskKind:
    """The job's task kind, its params checked by that kind's rules (`ValidationError` if not)."""
    kind = kind_for(name)
    errors = kind.validate(params, "appypie" if provider_name == "appypie" else "kling")
    if errors:
        raise ValidationError(errors)
    return kind


def _find_existing(
    svc: Services,
    provider: TaskProvider,
    job_id: str,
    token: str,
    original: KlingError | None,
    *,
    kind: TaskKind,
    limiter: SlotLimiter,
) -> Task | Literal[Lookup.NOT_FOUND] | Outcome:
    """A create may have gone through: look the task up by our id. Never create again before knowing.

    Returns the task, `Lookup.NOT_FOUND` when it surely does not exist, or the RETRY/FAILED outcome
    to return (the lookup failed too, or the provider cannot look tasks up by our id).
    """
    if not provider.supports_external_task_id:
        # The gateway cannot look a task up by our id: a retry could bill twice, so stop here.
        limiter.release(job_id)
        fail_job(
            svc,
            job_id,
            code=CREATE_UNCERTAIN,
            message=f"a create failed ambiguously and the provider cannot look tasks up by id: {original}",
        )
        return Outcome(Step.FAILED, detail=str(original))
    try:
        return provider.get_task(kind, external_task_id=job_id)
    except KlingError as exc:
        if not is_not_found(exc):
            # The lookup failed too: we still don't know. Keep the lease and ask again later.
            retry_in = backoff(1, base=1.0, cap=60.0)
            return keep_claim(svc, job_id, token, retry_in, svc.settings.stuck_submit_seconds)
    return Lookup.NOT_FOUND


def _record_submitted(svc: Services, job_id: str, task: Task) -> None:
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:  # deleted meanwhile; the provider task will just run out
            return
        try:
            transition(
                s,
                job,
                JobStatus.SUBMITTED,
                source="worker",
                provider_task_id=task.task_id,
                detail={"provider_task_id": task.task_id},
            )
        except TaskMismatch:
            log.error("submit: job %s got task %s but already has another", job_id, task.task_id)
            raise
        if task.status is not TaskStatus.SUBMITTED:
            # A lookup after an ambiguous create can find the task further along.
            apply_provider_task(s, job_id, task, source="poll")


def submit_here(app: Celery, svc: Services, job_id: str) -> None:
    """Run a dispatched job's submit in this worker process (`keep_first` of `worker.slots.pump`),
    as its task would: a retry goes out as that task's message, carrying the claim."""
    from worker.tasks import DISPATCH_TASK, MAX_COUNTDOWN

    with log_context(job_id=job_id):
        try:
            outcome = submit_job(svc, job_id)
        except Exception:  # as a failed task: the job stays queued for the pump
            log.exception("submit of job %s failed", job_id)
            return
        metrics.tasks_total.labels(task=DISPATCH_TASK.name, outcome=outcome.step.value).inc()
        if outcome.step is Step.RETRY:
            app.tasks[DISPATCH_TASK.name].apply_async(
                args=[job_id],
                kwargs={"claim": outcome.claim} if outcome.claim else None,
                countdown=min(outcome.retry_in, MAX_COUNTDOWN),
                priority=DISPATCH_TASK.priority,
            )


def register(app: Celery) -> Schedule:
    """The submit task; submits are queued by the outbox and the pump, never by beat."""
    # Imported here, not at the top: the web app imports this package without loading Celery.
    from worker.tasks import SUBMIT_TASK, claimed_step_task

    claimed_step_task(app, SUBMIT_TASK, submit_job)
    return {}
