"""What one run of a workflow step decided, and the write every workflow shares: failing the job."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from models.db import session_scope
from models.enums import JobStatus
from models.statemachine import transition
from models.tables import Job
from worker.services import Services


class Step(StrEnum):
    DONE = "done"  # nothing more to do for this message
    WAIT = "wait"  # no slots: the job stays queued, the pump dispatches it when slots free up
    RETRY = "retry"  # transient failure: run again after `retry_in`, keeping the claim
    FAILED = "failed"  # the job is now failed


@dataclass(frozen=True)
class Outcome:
    step: Step
    retry_in: float = 0.0
    detail: str = ""
    # The claim a RETRY keeps: the retried message presents it to take the job back.
    claim: str | None = None


def fail_job(svc: Services, job_id: str, *, code: str, message: str, source: str = "worker") -> None:
    with session_scope(svc.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None:
            transition(s, job, JobStatus.FAILED, source=source, error_code=code, error_message=message)
