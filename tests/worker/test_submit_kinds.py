"""Submit routes by task kind (worker/submit.py -> worker/routing.py): a job goes only to an account
whose `kinds` include the job's kind, even when another account has free slots; a job whose kind no
account serves fails with `kind_not_served` and no create goes out anywhere.

Real parts: PostgreSQL, one Redis limiter per account, two simulators over HTTP (one per account).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import update

from kling import KlingClient
from kling.client import ImageProvider
from kling.simulator import Simulator
from models.accounts import Account
from models.db import make_engine, session_scope
from models.settings import Settings
from models.statemachine import create_job
from models.tables import Job
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
from worker import slots, submit
from worker.accounts import AccountGate
from worker.limiter import RedisSlotLimiter
from worker.outcome import Step
from worker.routing import KIND_NOT_SERVED
from worker.services import Services

pytestmark = pytest.mark.integration

# "videos" is first in file order and has free slots: only its kinds keep image jobs off it.
KINDS = {"videos": ("text_to_video", "try_on"), "images": ("image",)}


@dataclass
class Pool:
    svc: Services
    sims: dict[str, Simulator]

    def job(self, kind: str, params: dict[str, Any] | None = None) -> str:
        with session_scope(self.svc.sessions) as s:
            job_id = create_job(s, params or {"prompt": "a lighthouse", "n": 1}, provider="kling").job.id
            # Set as the API will once `kind` lands on POST /v1/jobs (migration 0007 has the column).
            s.execute(update(Job).where(Job.id == job_id).values(kind=kind))
            return job_id

    def get(self, job_id: str) -> Job:
        with session_scope(self.svc.sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            s.expunge(job)
            return job


@pytest.fixture
def pool(committed_pg_url: str, simulator_factory: Any, redis_client: Any) -> Iterator[Pool]:
    sims = {
        name: simulator_factory(concurrency=2, task_seconds=30, seed=seed) for seed, name in enumerate(KINDS)
    }
    prefix = f"test:kinds:{secrets.token_hex(4)}"
    accounts = tuple(
        Account(name=name, provider="kling", api_base=sims[name].base_url, concurrency=2, kinds=kinds)
        for name, kinds in KINDS.items()
    )
    clients: dict[str, ImageProvider] = {
        name: KlingClient(
            access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, base_url=sim.base_url, max_retries=0
        )
        for name, sim in sims.items()
    }
    engine = make_engine(committed_pg_url)
    svc = Services(
        Settings(database_url=committed_pg_url, reconcile_after_seconds=0),
        engine=engine,
        accounts=accounts,
        account_providers=clients,
        limiters={
            name: RedisSlotLimiter(redis_client, limit=2, lease_seconds=60, key_prefix=f"{prefix}:{name}")
            for name in KINDS
        },
        account_gate=AccountGate(redis_client, f"{prefix}:account", probe_seconds=30),
        publish=lambda name, args: None,
    )
    yield Pool(svc, sims)
    engine.dispose()
    keys = list(redis_client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_client.delete(*keys)


def test_a_job_goes_only_to_an_account_serving_its_kind(pool: Pool) -> None:
    jobs = [pool.job("image") for _ in range(3)]
    outcomes = [submit.submit_job(pool.svc, j).step for j in jobs]
    # "images" holds 2 slots; the third waits although "videos" has both of its slots free.
    assert outcomes == [Step.DONE, Step.DONE, Step.WAIT]
    assert [pool.get(j).account for j in jobs] == ["images", "images", None]
    assert pool.sims["videos"].create_count == 0
    assert pool.svc.limiter_for("videos").holders() == {}


def test_a_job_of_a_kind_no_account_serves_fails_and_nothing_is_created(pool: Pool) -> None:
    job_id = pool.job("omni_video", {"prompt": "a fox runs"})  # valid for its kind (checked before routing)
    outcome = submit.submit_job(pool.svc, job_id)
    assert outcome.step is Step.FAILED
    job = pool.get(job_id)
    assert (job.status, job.error_code, job.account) == ("failed", KIND_NOT_SERVED, None)
    assert job.error_message is not None and "omni_video" in job.error_message
    assert [sim.create_count for sim in pool.sims.values()] == [0, 0]


def test_the_limiter_holds_the_slots_recorded_on_the_job(pool: Pool) -> None:
    # Job.slots is set at create from the kind's weight (kling/kinds.py: an omni series of 2 holds
    # 2 slots whatever its `n`); submit acquires exactly that, never a count of its own from params.
    job_id = pool.job("image")
    with session_scope(pool.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(slots=2))
    assert submit.submit_job(pool.svc, job_id).step is Step.DONE
    assert pool.svc.limiter_for("images").holders() == {job_id: 2}
    other = pool.job("image")
    assert submit.submit_job(pool.svc, other).step is Step.WAIT  # both of the account's slots held


def test_the_pump_dispatches_the_jobs_an_account_with_free_slots_serves(pool: Pool) -> None:
    videos = [pool.job("text_to_video", {"prompt": "a fox runs"}) for _ in range(3)]
    images = [pool.job("image") for _ in range(2)]
    # Recorded from here: creating the jobs above published their own first dispatch.
    published: list[str] = []
    pool.svc.publish = lambda name, args: published.extend(args)
    # The video account is full; the image account has both slots free.
    assert pool.svc.limiter_for("videos").acquire("other-1", 1)
    assert pool.svc.limiter_for("videos").acquire("other-2", 1)
    # Older video jobs first in the queue, and still the image jobs are the ones sent to submit.
    assert slots.pump(pool.svc) == images
    assert published == images
    assert set(videos).isdisjoint(published)
