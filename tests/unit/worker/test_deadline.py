"""The supervisor's deadline: a normal finish, a cooperative cancel, forcing after the grace, stuck threads."""

from __future__ import annotations

import asyncio
import threading
import time

from service.errors import CancellationRequested
from service.plugins.cancellation import CancellationToken
from service.worker.deadline import supervise


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
