"""The worker's plain functions wired to real parts (PostgreSQL, a Redis limiter, moto S3 and the
simulator over HTTP), with publishes recorded instead of sent: `harness` (tests/worker/conftest.py).
`Jobs` (make a job, read it back) is shared with the two-account `Pool` of test_routing.py."""

from __future__ import annotations

import time
from typing import Any

from kling.simulator import Simulator
from models.db import session_scope
from models.statemachine import apply_provider_task, create_job
from models.tables import Job
from worker import submit
from worker.outcome import Step
from worker.services import Services


class Jobs:
    """Jobs made and read back through `svc`'s database, as the worker's tests need them."""

    svc: Services

    def job(self, params: dict[str, Any] | None = None) -> str:
        with session_scope(self.svc.sessions) as s:
            return create_job(s, params or {"prompt": "a lighthouse", "n": 1}, provider="kling").job.id

    def get(self, job_id: str) -> Job:
        with session_scope(self.svc.sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            _ = job.images, job.transitions
            return job


class Harness(Jobs):
    def __init__(self, svc: Services, sim: Simulator) -> None:
        self.svc = svc
        self.sim = sim
        self.published: list[tuple[str, list[Any]]] = []
        svc.publish = lambda name, args: self.published.append((name, args))

    def wait_sim_final(self, task_id: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sim.task(task_id)["status"] not in ("succeed", "failed"):
            assert time.monotonic() < deadline, "simulator task did not finish"
            time.sleep(0.02)

    def submit_and_finish(self, params: dict[str, Any] | None = None) -> Job:
        """Submit through the worker, let the simulator finish, apply the result as a poll."""
        job_id = self.job(params)
        assert submit.submit_job(self.svc, job_id).step is Step.DONE
        job = self.get(job_id)
        self.wait_sim_final(job.provider_task_id or "")
        task = self.svc.provider.get_image(job.provider_task_id)
        with session_scope(self.svc.sessions) as s:
            apply_provider_task(s, job_id, task, source="poll")
        return self.get(job_id)
