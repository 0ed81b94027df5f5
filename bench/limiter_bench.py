"""Limiter micro-benchmark: acquire/release p99 with 20,000 and 100,000 waiters on the local Redis.

`python -m bench.limiter_bench [--smoke] [--redis-url URL]` prints the figures. `run(ctx)` is the
`bench` entry point (add `"limiter": "bench.limiter_bench:run"` to `bench.__main__.BENCHES`).

Scenario: the account is full (limit 10, ten 1-slot leases) and the queue holds N live waiters
that have waited minutes (all starving). Each round times three script calls: a random waiter
asking again (refused: the common call in a backlog), a holder releasing, and the head of the queue
asking (granted, so the limiter stays full). A second part leaves N waiters to expire and counts
the calls, and the slowest one, until they are all purged. The keys use a random prefix and are
deleted afterwards; nothing else in the database is touched.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from bench import infra
from bench.context import Context
from bench.report import BenchResult, Figure, percentile
from worker.limiter import RedisSlotLimiter

LIMIT = 10
FILL_CHUNK = 10_000


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def fill_waiters(client: redis.Redis, limiter: RedisSlotLimiter, count: int, *, expired: bool) -> list[str]:
    """Queue `count` one-slot waiters that arrived ten minutes ago, oldest first (written directly)."""
    _, _, waitq, wslots, wseen, _ = limiter.keys
    now = _redis_now_ms(client)
    seen_until = now - 1 if expired else now + 3_600_000
    names = [f"w{i:06d}" for i in range(count)]
    pipe = client.pipeline(transaction=False)
    for start in range(0, count, FILL_CHUNK):
        chunk = names[start : start + FILL_CHUNK]
        pipe.zadd(waitq, {name: now - 600_000 + start + i for i, name in enumerate(chunk)})
        pipe.hset(wslots, mapping=dict.fromkeys(chunk, 1))
        pipe.zadd(wseen, dict.fromkeys(chunk, seen_until))
    pipe.execute()
    return names


def _timed(samples: list[float], call: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    result = call(*args)
    samples.append((time.perf_counter() - start) * 1000)
    return result


def measure_backlog(client: redis.Redis, waiters: int, rounds: int) -> dict[str, float]:
    """p50 and p99 (ms) of acquire and release with `waiters` live waiters queued behind a full account."""
    limiter = RedisSlotLimiter(client, limit=LIMIT, lease_seconds=600, key_prefix=f"bench:{uuid.uuid4().hex}")
    try:
        holders = [f"h{i}" for i in range(LIMIT)]
        for holder in holders:
            assert limiter.acquire(holder, 1)
        queue = fill_waiters(client, limiter, waiters, expired=False)
        rng = random.Random(7)
        acquire_ms: list[float] = []
        release_ms: list[float] = []
        for _ in range(rounds):
            asker = queue[rng.randrange(1, len(queue))]
            if _timed(acquire_ms, limiter.acquire, asker, 1):
                raise RuntimeError("a waiter overtook the head of a full queue")
            _timed(release_ms, limiter.release, holders.pop(0))
            head = queue.pop(0)
            if not _timed(acquire_ms, limiter.acquire, head, 1):
                raise RuntimeError("the head of the queue was refused a free slot")
            holders.append(head)
        return {
            "acquire p50": percentile(acquire_ms, 50),
            "acquire p99": percentile(acquire_ms, 99),
            "release p50": percentile(release_ms, 50),
            "release p99": percentile(release_ms, 99),
        }
    finally:
        client.delete(*limiter.keys)


def measure_expired(client: redis.Redis, waiters: int) -> dict[str, float]:
    """Calls (and the slowest call, ms) until `waiters` expired waiters are all purged."""
    limiter = RedisSlotLimiter(client, limit=LIMIT, lease_seconds=600, key_prefix=f"bench:{uuid.uuid4().hex}")
    try:
        fill_waiters(client, limiter, waiters, expired=True)
        call_ms: list[float] = []
        while client.zcard(limiter.keys[4]) and len(call_ms) < waiters:
            _timed(call_ms, limiter.holders)
        return {"purge calls": float(len(call_ms)), "purge slowest call": max(call_ms)}
    finally:
        client.delete(*limiter.keys)


def measure(redis_url: str, *, smoke: bool = False) -> dict[str, float]:
    sizes = (2_000, 10_000) if smoke else (20_000, 100_000)
    rounds = 50 if smoke else 300
    client = redis.Redis.from_url(redis_url, socket_timeout=30)
    figures: dict[str, float] = {}
    for size in sizes:
        for name, value in measure_backlog(client, size, rounds).items():
            figures[f"{name} @{size:,} waiters"] = value
    for name, value in measure_expired(client, sizes[-1]).items():
        figures[f"{name} @{sizes[-1]:,} expired"] = value
    return figures


def run(ctx: Context) -> BenchResult:
    figures = [
        Figure("limiter", name, value, unit="" if name.startswith("purge calls") else "ms")
        for name, value in measure(infra.REDIS_URL, smoke=ctx.smoke).items()
    ]
    return BenchResult("limiter", 0.0, figures=figures)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="2,000 and 10,000 waiters, fewer rounds")
    parser.add_argument("--redis-url", default=infra.REDIS_URL)
    args = parser.parse_args(argv)
    for name, value in measure(args.redis_url, smoke=args.smoke).items():
        print(f"{name:40} {value:10.3f}")


if __name__ == "__main__":
    main()
