"""The packing model the performance notes quote (bench/packing_model.py)."""

from __future__ import annotations

import pytest

from bench.packing_model import bench_mix, simulate, utilisation


@pytest.mark.parametrize("rule", ["queue_order", "largest_first"])
def test_every_job_runs_once_and_the_slots_are_never_exceeded(rule: str) -> None:
    ns = bench_mix(60)
    spans = simulate(ns, rule=rule, slots=10)
    assert sorted(n for _, _, n in spans) == sorted(ns)
    events = sorted([(start, n) for start, _, n in spans] + [(end, -n) for _, end, n in spans])
    in_use = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts at one instant
        in_use += delta
        assert in_use <= 10


def test_tasks_in_step_pack_perfectly_and_spread_ones_do_not() -> None:
    ns = [2] * 50  # five jobs fill the slots exactly, every wave; only the 20 ms creates idle them
    assert utilisation(ns, known_after=0.0, jitter=0.0) > 0.99
    mixed = bench_mix()
    assert utilisation(mixed, known_after=0.0, jitter=0.05) < 0.95
