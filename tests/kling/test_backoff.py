"""`kling.http.backoff`, the one retry delay of the client, the worker's tasks and downstream notify."""

from __future__ import annotations

import random

import pytest

from kling.http import DEFAULT_MAX_RETRY_AFTER, RetryPolicy, backoff

ALMOST_ONE = 1.0 - 2**-53  # the largest value `random.random()` returns


@pytest.mark.parametrize("attempt", range(8))
def test_the_bound_doubles_each_attempt_until_the_cap(attempt: int) -> None:
    bound = backoff(attempt, base=0.5, cap=10.0, rand=lambda: ALMOST_ONE)
    assert bound == pytest.approx(min(10.0, 0.5 * 2**attempt))
    assert backoff(attempt, base=0.5, cap=10.0, rand=lambda: 0.0) == 0.0


def test_the_cap_holds_for_any_attempt_without_overflowing() -> None:
    # A delivery retried for a day reaches attempt numbers where 2**attempt is not a float.
    for attempt in (30, 64, 1_100, 10**6):
        assert backoff(attempt, base=5.0, cap=600.0, rand=lambda: ALMOST_ONE) == pytest.approx(600.0)


def test_full_jitter_spreads_delays_over_the_whole_range() -> None:
    rng = random.Random(19)
    delays = [backoff(3, base=1.0, cap=60.0, rand=rng.random) for _ in range(2_000)]
    assert all(0.0 <= d < 8.0 for d in delays)
    # Full jitter, not "equal jitter" (half fixed, half random): both ends of [0, 8) are reached.
    assert min(delays) < 0.5 and max(delays) > 7.5


def test_retry_after_replaces_the_computed_delay() -> None:
    assert backoff(0, base=0.5, cap=10.0, retry_after=7.0) == 7.0
    # Honoured even above the exponential cap: the server knows when it will have room.
    assert backoff(0, base=0.5, cap=10.0, retry_after=45.0) == 45.0


def test_retry_after_is_capped() -> None:
    assert backoff(0, base=0.5, cap=10.0, retry_after=3600.0) == DEFAULT_MAX_RETRY_AFTER
    assert backoff(0, base=0.5, cap=10.0, retry_after=3600.0, max_retry_after=120.0) == 120.0


def test_a_zero_retry_after_falls_back_to_the_backoff() -> None:
    assert backoff(2, base=1.0, cap=60.0, retry_after=0.0, rand=lambda: 0.5) == 2.0


def test_the_client_policy_uses_it() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=30.0, max_retry_after=20.0, rand=lambda: ALMOST_ONE)
    assert policy.delay(3) == pytest.approx(4.0)
    assert policy.delay(10) == pytest.approx(30.0)
    assert policy.delay(0, retry_after=600.0) == 20.0
