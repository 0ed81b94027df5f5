"""How well a slot-assignment rule can pack the utilisation benchmark's jobs, in a model (pure).

The model: `slots` provider slots, jobs of `n` slots each in a queue, every task `task_seconds`
long. Each time tasks end, the service learns of it `known_after` seconds later and hands the free
slots out by `rule`; each create lands 20 ms + up to `jitter` seconds after that (the hop to the
worker and the request), which is what spreads the tasks' ends out of step. Utilisation is the
provider's: busy slot-seconds over slots x first create to last end.

    python -m bench.packing_model

prints it for the limiter's rule (free slots in queue order to the waiters that fit) and for
"largest that fits first among the first `window` waiters", at a few delays
(docs/performance.md, "what still limits the utilisation runs").
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence

CREATE_SECONDS = 0.02


def queue_order(queue: list[int], ns: Sequence[int], left: int, window: int) -> list[int]:
    """The limiter's rule (no waiter starving): in queue order, each waiter that fits."""
    chosen = []
    for job in queue:
        if ns[job] <= left:
            left -= ns[job]
            chosen.append(job)
    return chosen


def largest_first(queue: list[int], ns: Sequence[int], left: int, window: int) -> list[int]:
    """Among the first `window` waiters, the largest that fits first (the earliest of equals)."""
    head, chosen = list(queue[:window]), []
    while fits := [job for job in head if ns[job] <= left]:
        best = max(fits, key=lambda job: ns[job])  # max keeps the first of equals: queue order
        chosen.append(best)
        head.remove(best)
        left -= ns[best]
    return chosen


def simulate(
    ns: Sequence[int],
    *,
    rule: str = "queue_order",
    window: int = 10,
    slots: int = 10,
    task_seconds: float = 2.0,
    known_after: float = 0.05,
    jitter: float = 0.05,
    seed: int = 1,
) -> list[tuple[float, float, int]]:
    """The tasks the run creates: (created, ended, slots), one per job."""
    pick = {"queue_order": queue_order, "largest_first": largest_first}[rule]
    rng = random.Random(seed)
    queue, free = list(range(len(ns))), slots
    known: list[tuple[float, int]] = []  # (when the service learns a task ended, its slots)
    spans: list[tuple[float, float, int]] = []

    def hand_out(now: float) -> None:
        nonlocal free
        for job in pick(queue, ns, free, window):
            queue.remove(job)
            free -= ns[job]
            created = now + CREATE_SECONDS + rng.uniform(0.0, jitter)
            spans.append((created, created + task_seconds, ns[job]))
            heapq.heappush(known, (created + task_seconds + known_after, ns[job]))

    hand_out(0.0)
    while known:
        now, n = heapq.heappop(known)
        free += n
        while known and known[0][0] <= now:  # learnt together: one hand-out
            free += heapq.heappop(known)[1]
        hand_out(now)
    return spans


def utilisation(ns: Sequence[int], *, slots: int = 10, **model: float | str | int) -> float:
    spans = simulate(ns, slots=slots, **model)  # type: ignore[arg-type]
    busy = sum(n * (end - start) for start, end, n in spans)
    span = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return busy / (slots * span)


def bench_mix(jobs: int = 200) -> list[int]:
    """The utilisation benchmark's jobs (bench/pipeline_bench.py: seed 11, n from 1 to 4)."""
    rng = random.Random(11)
    return [rng.randint(1, 4) for _ in range(jobs)]


def main() -> None:
    ns = bench_mix()
    print("delay (known_after) | queue order | largest first, window 10 | window 200")
    for known_after in (0.0, 0.05, 0.1, 0.15):
        runs = [
            sum(utilisation(ns, rule=rule, window=w, known_after=known_after, seed=s) for s in range(5)) / 5
            for rule, w in (("queue_order", 0), ("largest_first", 10), ("largest_first", 200))
        ]
        print(f"{known_after:.2f} s | " + " | ".join(f"{u:.3f}" for u in runs))


if __name__ == "__main__":
    main()
