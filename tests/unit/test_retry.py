"""Retry policies: backoff within the jitter bounds, decisions, overrides merged in order (no Redis)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import Retry
from service.retry import RetryOverride, RetryPolicy, decide, merge


@given(
    attempt=st.integers(min_value=1, max_value=30),
    delay=st.floats(min_value=0, max_value=100),
    multiplier=st.floats(min_value=1, max_value=5),
    cap=st.floats(min_value=0, max_value=1000),
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(),
)
def test_backoff_follows_the_policy_within_jitter_bounds(
    attempt: int, delay: float, multiplier: float, cap: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(delay_s=delay, multiplier=multiplier, max_delay_s=cap, jitter=jitter)
    got = policy.delay_for(attempt, random.Random(seed))
    base = min(delay * multiplier ** (attempt - 1), cap)
    assert 0 <= got <= cap
    assert base * (1 - jitter) - 1e-9 <= got <= min(base * (1 + jitter), cap) + 1e-9


def test_fixed_backoff_and_exact_delays_without_jitter() -> None:
    policy = RetryPolicy(backoff="fixed", delay_s=2, jitter=0)
    assert [policy.delay_for(n) for n in (1, 2, 3)] == [2, 2, 2]
    expo = RetryPolicy(delay_s=0.5, multiplier=3, max_delay_s=10, jitter=0)
    assert [expo.delay_for(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10]


def test_decisions() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=["OSError"], never_retry_on=["PermissionError"], jitter=0)
    assert decide(policy, 1, error_types=("ConnectionError", "OSError", "Exception")).retry
    assert not decide(policy, 1, error_types=("PermissionError", "OSError")).retry  # never wins
    assert "not in retry_on" in decide(policy, 1, error_types=("ValueError",)).reason
    assert "exhausted" in decide(policy, 3, error_types=("OSError",)).reason
    assert not decide(policy, 1, timed_out=True).retry
    assert decide(policy.model_copy(update={"retry_timeouts": True}), 1, timed_out=True).retry
    raised = decide(policy, 2, error_types=("Retry",), requested_delay_s=7)
    assert (raised.retry, raised.delay_s) == (True, 7)  # Retry(delay) retries whatever the error rules
    assert not decide(policy, 3, requested_delay_s=7).retry  # ...but not past max_attempts


def test_partial_overrides_merge_in_order() -> None:
    base = RetryPolicy()
    action = RetryOverride(max_attempts=5, delay_s=0.1)
    job = RetryOverride(max_attempts=2)
    merged = merge(base, action, job)
    assert (merged.max_attempts, merged.delay_s, merged.multiplier) == (2, 0.1, base.multiplier)
    assert merge(base, None) == base
    with pytest.raises(ValueError, match="max_attempts"):
        RetryOverride(max_attempts=0)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        Retry(delay=-1)
