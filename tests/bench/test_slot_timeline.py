"""The idle-slot accounting the utilisation benchmark reports (bench/slot_timeline.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.slot_timeline import TaskSpan, slot_timeline


def test_idle_time_is_split_by_what_the_freed_slot_waited_for() -> None:
    # 2 slots. a (1 slot) ends at 2, known at 2.5, b takes its slot at 3; c (1 slot) runs 0.5-4.
    tasks = [
        TaskSpan("a", 1, 0.0, 2.0),
        TaskSpan("c", 1, 0.5, 4.0),
        TaskSpan("b", 1, 3.0, 4.0),
    ]
    tl = slot_timeline(tasks, 2, {"a": 2.5, "c": 4.0, "b": 4.0})
    assert tl.span_seconds == 4.0
    assert tl.busy_slot_seconds == pytest.approx(2.0 + 3.5 + 1.0)
    assert tl.utilisation == pytest.approx(6.5 / 8)
    assert tl.idle_at_start == pytest.approx(0.5)  # c's slot, free until its create
    assert tl.idle_until_known == pytest.approx(0.5)  # a ended at 2, known at 2.5
    assert tl.idle_after_known == pytest.approx(0.5)  # known at 2.5, b created at 3
    assert tl.idle_at_end == 0.0
    # a was learnt of 0.5 s after its end, b and c at theirs.
    assert tl.known_after_mean == pytest.approx(0.5 / 3)
    assert (tl.known_after_p50, tl.known_after_p90) == (0.0, pytest.approx(0.5))


def test_a_task_of_several_slots_waits_for_the_oldest_freed_ones() -> None:
    tasks = [TaskSpan("a", 1, 0.0, 1.0), TaskSpan("b", 1, 0.0, 2.0), TaskSpan("c", 2, 2.0, 4.0)]
    tl = slot_timeline(tasks, 2, {"a": 1.0, "b": 2.0})
    assert tl.idle_after_known == pytest.approx(1.0)  # a's slot sat from 1 to 2 waiting for b's
    assert tl.utilisation == pytest.approx((1 + 2 + 4) / 8)


spans = st.lists(
    st.tuples(
        st.integers(1, 3),
        st.floats(0, 100, allow_nan=False),
        st.floats(0.1, 10, allow_nan=False),
        st.floats(0, 5, allow_nan=False),
    ),
    min_size=1,
    max_size=30,
)


@given(spans)
def test_busy_and_idle_slot_seconds_add_up_to_the_whole(raw: list[tuple[int, float, float, float]]) -> None:
    # Lay tasks out one after another on 4 slots so the provider never exceeds them.
    slots, free_at = 4, [0.0] * 4
    tasks, known = [], {}
    for i, (width, gap, length, lag) in enumerate(raw):
        free_at.sort()
        start = free_at[width - 1] + gap
        for k in range(width):
            free_at[k] = start + length
        tasks.append(TaskSpan(str(i), width, start, start + length))
        known[str(i)] = start + length + lag
    tl = slot_timeline(tasks, slots, known)
    idle = tl.idle_until_known + tl.idle_after_known + tl.idle_at_start + tl.idle_at_end
    assert tl.busy_slot_seconds + idle == pytest.approx(slots * tl.span_seconds, rel=1e-9, abs=1e-6)
