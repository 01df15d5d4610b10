"""Retry policies, the cancellation token and the supervisor's escalation (no Redis)."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import CancellationRequested, Retry
from service.plugins.cancellation import CancellationToken
from service.retry import RetryOverride, RetryPolicy, decide, merge
from service.worker.deadline import supervise


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


async def test_token_from_the_loop_and_from_a_thread() -> None:
    token = CancellationToken(asyncio.get_running_loop())
    token.raise_if_cancelled()
    seen = threading.Event()

    def worker() -> None:
        if token.wait_sync(5):
            seen.set()

    thread = threading.Thread(target=worker)
    thread.start()
    waiter = asyncio.create_task(token.wait())
    assert token.cancel("user asked")
    assert not token.cancel("again")
    assert await asyncio.wait_for(waiter, 1) == "user asked"
    await asyncio.to_thread(thread.join)
    assert seen.is_set()
    assert token.reason == "user asked"
    with pytest.raises(CancellationRequested, match="user asked"):
        token.raise_if_cancelled()


async def test_supervise_finishes_normally() -> None:
    async def work() -> int:
        return 7

    token = CancellationToken(asyncio.get_running_loop())
    done = await supervise(work(), token=token, timeout_s=1, grace_s=1)
    assert (done.ending, done.result, done.forced) == ("done", 7, False)


async def test_cooperative_cancel_stops_within_the_grace_period() -> None:
    token = CancellationToken(asyncio.get_running_loop())

    async def cooperative() -> None:
        await token.wait()
        token.raise_if_cancelled()

    asyncio.get_running_loop().call_later(0.05, token.cancel, "stop")
    done = await supervise(cooperative(), token=token, timeout_s=10, grace_s=5)
    assert done.ending == "cancelled"
    assert isinstance(done.error, CancellationRequested)
    assert not done.forced


async def test_an_action_that_ignores_the_token_is_forced_after_the_grace() -> None:
    token = CancellationToken(asyncio.get_running_loop())

    async def stubborn() -> None:
        await asyncio.sleep(30)

    asyncio.get_running_loop().call_later(0.05, token.cancel, "stop")
    done = await supervise(stubborn(), token=token, timeout_s=10, grace_s=0.1)
    assert (done.ending, done.forced, done.stuck) == ("cancelled", True, False)


async def test_timeout_sets_the_token_then_forces() -> None:
    token = CancellationToken(asyncio.get_running_loop())

    async def slow() -> None:
        await asyncio.sleep(30)

    done = await supervise(slow(), token=token, timeout_s=0.05, grace_s=0.05)
    assert (done.ending, done.forced) == ("timed_out", True)
    assert token.reason == "timeout"


async def test_a_thread_that_never_stops_is_reported_stuck() -> None:
    token = CancellationToken(asyncio.get_running_loop())
    release = threading.Event()

    def blocked() -> None:
        release.wait(10)
        time.sleep(0)

    async def in_thread() -> None:
        # shield: cancelling the awaiting task does not end the thread, as with a real plain def
        await asyncio.shield(asyncio.to_thread(blocked))

    done = await supervise(in_thread(), token=token, timeout_s=0.05, grace_s=0.05)
    release.set()
    assert done.ending == "timed_out"
    assert done.forced
