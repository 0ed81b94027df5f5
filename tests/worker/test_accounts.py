"""Account pauses (worker/accounts.py): a dry pack or an account problem pauses submitting and
never fails a job; one probe create per ACCOUNT_PROBE_SECONDS finds out when it works again.

The submit tests run on real parts (PostgreSQL, the Redis gate and limiter, the simulator over
HTTP) through the `harness` fixture; the gate rules run against both gates."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from kling.errors import (
    AccountError,
    AccountInArrears,
    ConcurrencyLimitExceeded,
    ContentPolicyError,
    InvalidParameterValue,
    IPWhitelistError,
    KlingError,
    PermissionDenied,
    RateLimited,
    ResourcePackDepleted,
    ServerError,
    ServiceUnavailable,
    TransportError,
    error_for,
)
from tests.worker.harness import Harness
from worker import slots, submit
from worker.accounts import DEFAULT_ACCOUNT, AccountGate, LocalAccountGate, pauses_account
from worker.outcome import Step

ACCOUNT = DEFAULT_ACCOUNT


def wait_for(check: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


# --- the decision -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        AccountError(),
        AccountInArrears(),
        ResourcePackDepleted(),
        IPWhitelistError(),
        error_for(1102, 429),
        ServiceUnavailable(),
        error_for(5001, 503),
    ],
)
def test_account_codes_pause_the_account(exc: KlingError) -> None:
    assert pauses_account(exc)


@pytest.mark.parametrize(
    "exc",
    [
        PermissionDenied(),  # 1103: this job's model or API, not the account; the job fails
        error_for(None, 403),
        RateLimited(),
        ConcurrencyLimitExceeded(),
        ContentPolicyError(),
        InvalidParameterValue(),
        ServerError(),
        error_for(None, 503),  # a proxy's bare 503, not Kling's 5001 maintenance
        TransportError("reset"),
    ],
)
def test_other_errors_do_not_pause_the_account(exc: KlingError) -> None:
    assert not pauses_account(exc)


# --- the gates ----------------------------------------------------------------------------------------
Gate = AccountGate | LocalAccountGate


@pytest.fixture(params=["redis", "local"])
def make_gate(request: pytest.FixtureRequest) -> Iterator[Callable[[float], Gate]]:
    if request.param == "local":
        yield lambda probe_seconds: LocalAccountGate(probe_seconds=probe_seconds)
        return
    client: redis.Redis = request.getfixturevalue("redis_client")
    prefix = f"test:account:{secrets.token_hex(4)}"
    yield lambda probe_seconds: AccountGate(client, prefix, probe_seconds=probe_seconds)
    keys = list(client.scan_iter(match=f"*{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.mark.integration
def test_gate_pause_state_and_resume(make_gate: Callable[[float], Gate]) -> None:
    gate = make_gate(30.0)
    assert gate.state(ACCOUNT).paused is False and not gate.paused(ACCOUNT)
    before = time.time()
    assert gate.pause(ACCOUNT, 1102, "Resource pack depleted") is True
    first = gate.state(ACCOUNT)
    assert (first.paused, first.code, first.message) == (True, 1102, "Resource pack depleted")
    assert first.since is not None and before - 1 <= first.since <= time.time() + 1
    # A second refusal updates the reason, keeps the time the pause began, and is not "new".
    assert gate.pause(ACCOUNT, 1101, "arrears") is False
    again = gate.state(ACCOUNT)
    assert (again.code, again.message, again.since) == (1101, "arrears", first.since)
    assert gate.state("other").paused is False  # per account
    assert gate.resume(ACCOUNT) is True and gate.resume(ACCOUNT) is False
    assert gate.state(ACCOUNT).paused is False


@pytest.mark.integration
def test_gate_gives_one_probe_turn_per_period(make_gate: Callable[[float], Gate]) -> None:
    gate = make_gate(30.0)
    gate.pause(ACCOUNT, 1102, "dry")
    # The first probe waits a full period: right after a refusal a create would be refused too.
    assert gate.probe_turn(ACCOUNT) is False
    gate.probe_now(ACCOUNT)
    assert gate.probe_turn(ACCOUNT) is True
    assert [gate.probe_turn(ACCOUNT) for _ in range(5)] == [False] * 5
    # With a short period the next turn comes by itself, once.
    quick = make_gate(0.3)
    quick.pause("quick", 1102, "dry")
    started = time.monotonic()
    wait_for(lambda: quick.probe_turn("quick"), what="the next probe turn")
    assert time.monotonic() - started >= 0.2  # not before its period (a little slack for clocks)
    assert quick.probe_turn("quick") is False


# --- submit -----------------------------------------------------------------------------------------
def assert_queued_unclaimed(harness: Harness, job_id: str) -> None:
    job = harness.get(job_id)
    assert job.status == "queued" and job.error_code is None
    # No claim kept, and a refused or skipped create is no attempt: no lookup before the next one.
    assert (job.claim_token, job.claimed_until, job.create_attempts) == (None, None, 0)


@pytest.mark.integration
@pytest.mark.parametrize("code", [1100, 1101, 1102, 1304])
def test_an_account_refusal_pauses_the_account_and_keeps_the_job_queued(
    harness: Harness, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    harness.sim.configure(account_code=code)
    job_id = harness.job()
    with caplog.at_level(logging.WARNING, logger="worker.submit"):
        outcome = submit.submit_job(harness.svc, job_id)
    assert outcome.step is Step.WAIT
    assert_queued_unclaimed(harness, job_id)
    assert harness.svc.limiter.holders() == {}
    state = harness.svc.account_gate.state(ACCOUNT)
    assert (state.paused, state.code) == (True, code)
    assert f"account default paused: {code} " in caplog.text
    assert harness.sim.count_by_code[code] == 1 and harness.sim.create_count == 0
    # The reconciler's pump dispatches it again later.
    assert slots.pump(harness.svc) == [job_id]


@pytest.mark.integration
def test_a_paused_account_sends_one_probe_per_period_and_resumes_when_topped_up(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    gate, sim = harness.svc.account_gate, harness.sim
    sim.configure(account_code=1102)
    first, second = harness.job(), harness.job()
    assert submit.submit_job(harness.svc, first).step is Step.WAIT
    assert sim.count_by_code[1102] == 1

    # Paused, not this run's turn: nothing is sent, nothing held, nothing counted.
    assert submit.submit_job(harness.svc, second).step is Step.WAIT
    assert sim.count_by_code[1102] == 1
    assert_queued_unclaimed(harness, second)
    assert harness.svc.limiter.holders() == {}

    # The probe turn: one create goes out, is refused, and the account stays paused.
    gate.probe_now(ACCOUNT)
    assert submit.submit_job(harness.svc, second).step is Step.WAIT
    assert sim.count_by_code[1102] == 2
    assert submit.submit_job(harness.svc, first).step is Step.WAIT  # the turn is taken
    assert sim.count_by_code[1102] == 2
    assert gate.state(ACCOUNT).paused
    assert_queued_unclaimed(harness, first)
    assert_queued_unclaimed(harness, second)

    # Topped up: the next probe creates, the account resumes, the rest go out as usual.
    sim.configure(account_code=None)
    assert submit.submit_job(harness.svc, first).step is Step.WAIT  # still no turn
    assert sim.create_count == 0
    gate.probe_now(ACCOUNT)
    with caplog.at_level(logging.WARNING, logger="worker.submit"):
        assert submit.submit_job(harness.svc, first).step is Step.DONE
    assert "account default resumed" in caplog.text
    assert gate.state(ACCOUNT).paused is False
    assert submit.submit_job(harness.svc, second).step is Step.DONE
    assert [harness.get(j).status for j in (first, second)] == ["submitted", "submitted"]
    assert sim.create_count == 2 and sim.count_by_code[1102] == 2
    assert harness.svc.limiter.holders() == {first: 1, second: 1}


@pytest.mark.integration
def test_the_probe_comes_by_itself_after_account_probe_seconds(harness: Harness) -> None:
    gate, sim = harness.svc.account_gate, harness.sim
    gate.probe_seconds = 0.3
    sim.configure(account_code=1102)
    job_id = harness.job()
    started = time.monotonic()
    assert submit.submit_job(harness.svc, job_id).step is Step.WAIT
    sim.configure(account_code=None)
    # As the reconciler's pump would: dispatch again until the probe turn comes.
    wait_for(lambda: submit.submit_job(harness.svc, job_id).step is Step.DONE, what="the probe")
    assert time.monotonic() - started >= 0.2
    assert sim.count_by_code[1102] == 1 and sim.create_count == 1
    assert gate.state(ACCOUNT).paused is False and harness.get(job_id).status == "submitted"


@pytest.mark.integration
def test_1103_still_fails_the_job_and_does_not_pause(harness: Harness) -> None:
    harness.sim.configure(account_code=1103)
    job_id = harness.job()
    assert submit.submit_job(harness.svc, job_id).step is Step.FAILED
    job = harness.get(job_id)
    assert (job.status, job.error_code) == ("failed", "1103")
    assert harness.svc.account_gate.state(ACCOUNT).paused is False
    assert harness.svc.limiter.holders() == {}


@pytest.mark.integration
def test_a_run_that_may_have_created_already_looks_up_while_paused_and_creates_only_in_its_turn(
    harness: Harness,
) -> None:
    # An earlier run's create may have gone through (a timeout): giving its slots back while that
    # task may be running would let the account overfill once it resumes. It looks up first; the
    # task surely absent, it creates only with the account's probe turn, like any other job.
    from sqlalchemy import update

    from models.db import session_scope
    from models.tables import Job

    job_id = harness.job()
    with session_scope(harness.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(create_attempts=1))
    harness.svc.account_gate.pause(ACCOUNT, 1102, "dry")
    waiting = submit.submit_job(harness.svc, job_id)
    assert waiting.step is Step.RETRY and waiting.retry_in == harness.svc.account_gate.probe_seconds
    assert harness.sim.create_count == 0  # looked up (nothing there), and no create
    job = harness.get(job_id)
    # Still pinned (a late create there could not be deduplicated elsewhere), holding its claim
    # until the probe turn, not its slots.
    assert (job.create_attempts, job.claim_token) == (1, waiting.claim)
    assert harness.svc.limiter.holders() == {}

    harness.svc.account_gate.probe_now(ACCOUNT)
    assert submit.submit_job(harness.svc, job_id, claim=waiting.claim).step is Step.DONE
    assert harness.sim.create_count == 1 and len(harness.sim.tasks_by_external_id(job_id)) == 1
    assert harness.svc.limiter.holders() == {job_id: 1}
    assert harness.svc.account_gate.state(ACCOUNT).paused is False


@pytest.mark.integration
def test_5001_pauses_the_account_and_the_job_looks_up_holding_its_slots_before_waiting(
    harness: Harness,
) -> None:
    # Maintenance answers a create with a 5xx: it may have been processed. Slots stay held while
    # the task may exist; the job is never failed, and creates again only with a probe turn.
    gate, sim = harness.svc.account_gate, harness.sim
    sim.configure(fault_5001_rate=1.0, faults_on_create_only=True)
    job_id = harness.job()
    first = submit.submit_job(harness.svc, job_id)
    assert first.step is Step.RETRY
    job = harness.get(job_id)
    assert (job.status, job.create_attempts, job.account) == ("queued", 1, ACCOUNT)
    assert job.claim_token is not None
    assert harness.svc.limiter.holders() == {job_id: 1}
    assert (gate.state(ACCOUNT).paused, gate.state(ACCOUNT).code) == (True, 5001)

    # The retry looks up again (nothing), and without a probe turn waits for one, still pinned to
    # the account (the 5001'd create could be processed late), its slots free.
    again = submit.submit_job(harness.svc, job_id, claim=job.claim_token)
    assert again.step is Step.RETRY and harness.get(job_id).create_attempts == 1
    assert harness.svc.limiter.holders() == {}
    assert sim.create_count == 0

    sim.configure(fault_5001_rate=0.0)
    gate.probe_now(ACCOUNT)
    assert submit.submit_job(harness.svc, job_id, claim=again.claim).step is Step.DONE
    assert gate.state(ACCOUNT).paused is False
    assert sim.create_count == 1 and harness.get(job_id).status == "submitted"


@pytest.mark.integration
def test_an_older_task_found_by_a_lookup_does_not_resume_a_paused_account(harness: Harness) -> None:
    # J's create timed out before the pause and its task exists; K's create then paused the
    # account. J's retry finds its task: that says nothing about the account now.
    from sqlalchemy import update

    from kling import ImageRequest
    from models.db import session_scope
    from models.tables import Job

    job_id = harness.job()
    with session_scope(harness.svc.sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(create_attempts=1))
    harness.svc.provider.create_image(
        ImageRequest.from_params({"prompt": "a lighthouse"}), external_task_id=job_id
    )
    harness.svc.account_gate.pause(ACCOUNT, 1102, "dry")
    assert submit.submit_job(harness.svc, job_id).step is Step.DONE
    assert harness.get(job_id).provider_task_id is not None
    assert harness.svc.account_gate.state(ACCOUNT).paused


def test_a_bare_503_is_a_server_error_not_maintenance() -> None:
    exc = error_for(None, 503)
    assert type(exc) is ServerError and not pauses_account(exc)
