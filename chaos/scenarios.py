"""The faults, one scenario each, and the run that checks the invariants after every one."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from chaos.accounts import PackRunsDry, TwoAccounts
from chaos.probe import Probe
from chaos.procs import POLL, wait_until
from chaos.stack import ChaosStack, Check, JobSpec

IN_FLIGHT = ("submitted", "processing", "succeeded")
# Simulator knobs every scenario starts from (a scenario's own knobs go on top).
BASE_KNOBS: dict[str, Any] = {
    "callback_drop_rate": 0.0,
    "response_delay_seconds": 0.0,
    "image_bytes": 64 * 1024,
}


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: `full` for `make chaos`, `short` for CI."""

    jobs: int
    kills: int
    outage_seconds: float
    redis_down_seconds: float
    webhook_down_seconds: float
    stall_seconds: float
    timeout: float
    backlog_jobs: int
    pack_dry_seconds: float


FULL = Profile(
    jobs=50,
    kills=3,
    outage_seconds=30,
    redis_down_seconds=5,
    webhook_down_seconds=10,
    stall_seconds=30,
    timeout=240,
    backlog_jobs=5000,
    pack_dry_seconds=30,
)
SHORT = Profile(
    jobs=20,
    kills=2,
    outage_seconds=8,
    redis_down_seconds=2,
    webhook_down_seconds=3,
    stall_seconds=10,
    timeout=120,
    backlog_jobs=300,
    pack_dry_seconds=30,
)
BACKLOG_CONNECTIONS = 8
# A generous drain time per queued job (measured: ~0.05 s per job on the 2-core machine).
BACKLOG_SECONDS_PER_JOB = 0.25
# How long the probe goes on asking after a stalled server is resumed (the recovery counts too).
PROBE_AFTER_SECONDS = 3.0


@dataclass
class Result:
    name: str
    fault: str
    submitted: int = 0
    expected_failed: int = 0
    seconds: float = 0.0
    check: Check = field(default_factory=Check)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class Injected:
    """What a fault adds to its run besides notes: findings of its own, and jobs it created."""

    problems: list[str] = field(default_factory=list)
    jobs: list[JobSpec] = field(default_factory=list)
    extra_seconds: float = 0.0  # added to the profile's timeout for the jobs to end


Inject = Callable[[ChaosStack, Profile, list[str], list[str]], Injected | None]
# Checks of a scenario's own, once its jobs are final: (stack, job ids, notes, problems).
After = Callable[[ChaosStack, list[str], list[str], list[str]], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    inject: Inject
    knobs: dict[str, Any] = field(default_factory=dict)
    after: After | None = None
    # Before its jobs are created: settings of its own (`stack.reconfigure`), undone afterwards.
    setup: Callable[[ChaosStack], None] | None = None


def _wait_for(stack: ChaosStack, ids: list[str], *states: str, timeout: float = 60.0) -> None:
    wait_until(
        lambda: stack.count_status(ids, *states) > 0, timeout=timeout, what=f"a job in {'/'.join(states)}"
    )


def kill_during_submit(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    for k in range(p.kills):
        # Mid-way through submitting: some jobs already at the provider, others still queued.
        wait_until(
            lambda: stack.count_status(ids, "queued") > 0 and stack.count_status(ids, *IN_FLIGHT) > 0,
            timeout=60,
            what="submits under way",
        )
        queued = stack.count_status(ids, "queued")
        stack.kill_worker(k % len(stack.workers))
        notes.append(f"kill {k + 1}: worker{k % len(stack.workers)} SIGKILLed with {queued} job(s) queued")
        stack.start_worker(k % len(stack.workers))
    # Creates were slowed down so the kills land inside them; let the rest go at full speed.
    stack.sim.configure(response_delay_seconds=0.0)


def kill_during_archive(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    for k in range(p.kills):
        _wait_for(stack, ids, "succeeded")
        archiving = stack.count_status(ids, "succeeded")
        stack.kill_worker(k % len(stack.workers))
        notes.append(
            f"kill {k + 1}: worker{k % len(stack.workers)} SIGKILLed with {archiving} job(s) archiving"
        )
        stack.start_worker(k % len(stack.workers))


def restart_redis(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    _wait_for(stack, ids, *IN_FLIGHT)
    stack.redis.stop()
    time.sleep(p.redis_down_seconds)  # the outage itself
    stack.redis.start()
    notes.append(f"redis down {p.redis_down_seconds:.0f} s, restarted empty (broker queue and leases lost)")


def backlog_then_restart_redis(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> Injected:
    """Thousands of queued jobs (their submit messages in Redis, most of them limiter waiters),
    then Redis restarted empty: the pump and the reconciler must bring every one of them back."""
    tag = secrets.token_hex(4)

    def create(chunk: range) -> list[JobSpec]:
        with requests.Session() as http:
            return [
                JobSpec(
                    stack.post_job(
                        {"prompt": f"backlog {tag} {i}", "n": 1, "aspect_ratio": "1:1"},
                        idempotency_key=f"backlog-{tag}-{i}",
                        timeout=120,
                        http=http,
                    ),
                    1,
                    "archived",
                )
                for i in chunk
            ]

    started = time.monotonic()
    with ThreadPoolExecutor(BACKLOG_CONNECTIONS) as pool:
        chunks = [range(k, p.backlog_jobs, BACKLOG_CONNECTIONS) for k in range(BACKLOG_CONNECTIONS)]
        jobs = [spec for part in pool.map(create, chunks) for spec in part]
    backlog = [s.id for s in jobs]
    queued = stack.count_status(backlog, "queued")
    notes.append(f"{len(jobs)} jobs created in {time.monotonic() - started:.0f} s; {queued} still queued")
    stack.redis.stop()
    time.sleep(p.redis_down_seconds)  # the outage itself
    stack.redis.start()
    notes.append(f"redis down {p.redis_down_seconds:.0f} s with the backlog queued, restarted empty")
    # Draining takes as long as the backlog needs at this stack's pace, not a fixed time.
    return Injected(jobs=jobs, extra_seconds=queued * BACKLOG_SECONDS_PER_JOB)


def stop_postgres(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    _wait_for(stack, ids, *IN_FLIGHT)
    stack.pg.stop()
    time.sleep(p.outage_seconds)  # the outage itself
    stack.pg.start()
    notes.append(f"postgres down {p.outage_seconds:.0f} s")


def s3_unavailable(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    stack.proxy.failing.set()
    try:
        time.sleep(p.outage_seconds)  # the outage itself
    finally:
        stack.proxy.failing.clear()
    notes.append(f"S3 answered 503 for {p.outage_seconds:.0f} s ({stack.proxy.refused} request(s) refused)")


def restart_webhook(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    _wait_for(stack, ids, *IN_FLIGHT)
    assert stack.webhook is not None
    stack.webhook.kill()
    time.sleep(p.webhook_down_seconds)  # the outage itself
    stack.start_webhook()
    notes.append(f"webhook SIGKILLed, down {p.webhook_down_seconds:.0f} s")


def _stall(
    stack: ChaosStack,
    p: Profile,
    ids: list[str],
    notes: list[str],
    *,
    what: str,
    pause: Callable[[], None],
    resume: Callable[[], None],
) -> Injected:
    """SIGSTOP a server for `stall_seconds` while a probe times the webhook's answers."""
    _wait_for(stack, ids, *IN_FLIGHT)
    deadline = time.monotonic() + 60
    while (found := stack.provider_task(ids)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no job has a provider task after 60 s")
        time.sleep(POLL)
    job_id, task_id = found
    probe = Probe(stack, job_id, task_id, f"stall-{secrets.token_hex(4)}").start()
    try:
        try:
            pause()
            time.sleep(p.stall_seconds)  # the stall itself
        finally:
            resume()
        time.sleep(PROBE_AFTER_SECONDS)  # answers right after the resume count too
    finally:
        probe.stop()
    notes.append(f"{what} SIGSTOPped {p.stall_seconds:.0f} s; {probe.summary()}")
    return Injected(problems=probe.problems(), jobs=probe.created_jobs(timeout=60))


def stall_redis(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> Injected:
    return _stall(stack, p, ids, notes, what="redis", pause=stack.redis.pause, resume=stack.redis.resume)


def stall_postgres(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> Injected:
    return _stall(stack, p, ids, notes, what="postgres", pause=stack.pg.pause, resume=stack.pg.resume)


_PACK = PackRunsDry()
_TWO = TwoAccounts()


def pack_runs_dry(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> Injected:
    problems = _PACK.inject(stack, p.pack_dry_seconds, ids, notes)
    # The queue drains after the top-up, within one probe interval: the wait grows by both.
    return Injected(problems=problems, extra_seconds=p.pack_dry_seconds + stack.tuning.account_probe_seconds)


def drop_callbacks(stack: ChaosStack, p: Profile, ids: list[str], notes: list[str]) -> None:
    notes.append("every callback dropped by the provider")


SCENARIOS = [
    Scenario(
        "kill-submit",
        "SIGKILL a worker during submit",
        kill_during_submit,
        # Slow creates so a kill lands while a submit is talking to the provider.
        {"response_delay_seconds": 0.5},
    ),
    Scenario(
        "kill-archive",
        "SIGKILL a worker during archive",
        kill_during_archive,
        # Bigger images keep archives running long enough to be killed in the middle.
        {"image_bytes": 1024 * 1024},
    ),
    Scenario("redis-restart", "restart Redis (no persistence)", restart_redis),
    Scenario("postgres-stop", "stop PostgreSQL", stop_postgres),
    Scenario("s3-503", "S3 answers 503", s3_unavailable),
    Scenario("webhook-restart", "kill and restart the webhook", restart_webhook),
    Scenario("drop-callbacks", "drop 100% of callbacks", drop_callbacks, {"callback_drop_rate": 1.0}),
    Scenario("redis-stall", "SIGSTOP Redis (accepts, never answers)", stall_redis),
    Scenario("postgres-stall", "SIGSTOP PostgreSQL (accepts, never answers)", stall_postgres),
    Scenario(
        "backlog-redis-restart",
        "thousands queued, then restart Redis",
        backlog_then_restart_redis,
        # Short tasks and small images: the backlog, not the provider, is what this scenario tests.
        {"task_seconds": 0.2, "image_bytes": 4096},
    ),
    Scenario(
        "pack-runs-dry",
        "resource pack runs dry mid-run (1102), topped up later",
        pack_runs_dry,
        after=_PACK.after,
    ),
    Scenario(
        "two-accounts",
        "two accounts from KLING_ACCOUNTS_FILE, the first dry for good after 3 creates, with faults",
        _TWO.inject,
        {
            "fault_5000_rate": 0.05,
            "fault_1302_rate": 0.1,
            "accept_then_drop_rate": 0.1,
            "callback_drop_rate": 0.2,
            "callback_duplicate_rate": 0.2,
        },
        after=_TWO.after,
        setup=_TWO.setup,
    ),
]
NAMES = [s.name for s in SCENARIOS]


def run(
    stack: ChaosStack, scenario: Scenario, profile: Profile, rng: random.Random, notes: list[str]
) -> Result:
    result = Result(scenario.name, scenario.fault)
    stack.sim.configure(**{**BASE_KNOBS, **scenario.knobs})
    started = time.monotonic()
    specs: list[JobSpec] = []
    try:
        if scenario.setup is not None:
            scenario.setup(stack)
        specs = stack.submit(f"{scenario.name}-{rng.getrandbits(32):08x}", profile.jobs, rng)
        ids = [s.id for s in specs]
        result.submitted = len(specs)
        result.expected_failed = sum(1 for s in specs if s.expect == "failed")
        injected = scenario.inject(stack, profile, ids, notes) or Injected()
        result.problems += injected.problems
        specs += injected.jobs
        ids += [s.id for s in injected.jobs]
        result.submitted = len(specs)
        result.expected_failed = sum(1 for s in specs if s.expect == "failed")
        restarts_before = len(stack.supervised_restarts)
        statuses = stack.wait_final(ids, timeout=profile.timeout + injected.extra_seconds)
        restarted = stack.supervised_restarts[restarts_before:]
        if restarted:
            notes.append(f"supervisor restarted {', '.join(restarted)} (exited on its own)")
        result.seconds = time.monotonic() - started
        pending = {j: s for j, s in statuses.items() if s not in ("archived", "failed")}
        if pending or len(statuses) != len(ids):
            result.problems.append(f"{len(pending) + len(ids) - len(statuses)} job(s) not final: {pending}")
        result.check = stack.check(specs, statuses, result.problems)
        if scenario.after is not None:
            scenario.after(stack, ids, notes, result.problems)
    except Exception as exc:  # noqa: BLE001  (a broken scenario is a FAIL row, not a crash of the suite)
        result.seconds = time.monotonic() - started
        result.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        stack.proxy.failing.clear()
        healed = stack.heal()
        if healed:
            result.problems.append(f"restarted after the scenario: {', '.join(healed)}")
        stack.sim.configure(**BASE_KNOBS, task_seconds=stack.tuning.task_seconds)
        if scenario.setup is not None and stack.env_overrides:
            stack.reconfigure({})
    return result
