"""The supervisor's deadline: a normal finish, interrupting at once, a cooperative thread, forcing, stuck threads."""

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
    done = await supervise(cooperative(), token=token, timeout_s=10, grace_s=5, interruptible=False)
    assert done.ending == "cancelled"
    assert isinstance(done.error, CancellationRequested)
    assert not done.forced


async def test_a_coroutine_that_ignores_the_token_is_interrupted_at_once() -> None:
    token = CancellationToken(asyncio.get_running_loop())

    async def stubborn() -> None:
        await asyncio.sleep(30)

    asyncio.get_running_loop().call_later(0.05, token.cancel, "stop")
    done = await supervise(stubborn(), token=token, timeout_s=10, grace_s=30)
    assert (done.ending, done.forced, done.stuck) == ("cancelled", False, False)
    assert isinstance(done.error, asyncio.CancelledError)


async def test_a_coroutine_that_swallows_the_cancel_is_forced_after_the_grace() -> None:
    token = CancellationToken(asyncio.get_running_loop())
    interrupted = 0

    async def swallows() -> None:
        nonlocal interrupted
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            interrupted += 1
        await asyncio.sleep(30)  # the forced cancel lands here

    asyncio.get_running_loop().call_later(0.05, token.cancel, "stop")
    done = await supervise(swallows(), token=token, timeout_s=10, grace_s=0.1)
    assert (done.ending, done.forced, done.stuck, interrupted) == ("cancelled", True, False, 1)


async def test_the_timeout_sets_the_token_and_interrupts_the_coroutine() -> None:
    token = CancellationToken(asyncio.get_running_loop())
    seen: list[str | None] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            seen.append(token.reason)  # the token is set before the interruption

    done = await supervise(slow(), token=token, timeout_s=0.05, grace_s=30)
    assert (done.ending, done.forced) == ("timed_out", False)
    assert seen == ["timeout"]


async def test_a_thread_that_ignores_the_token_is_forced_after_the_grace() -> None:
    token = CancellationToken(asyncio.get_running_loop())
    release = threading.Event()

    async def in_thread() -> None:
        await asyncio.shield(asyncio.to_thread(release.wait, 0.3))  # a thread ends when it ends

    done = await supervise(in_thread(), token=token, timeout_s=0.05, grace_s=0.05, interruptible=False)
    assert (done.ending, done.forced) == ("timed_out", True)


async def test_a_thread_that_never_stops_is_reported_stuck() -> None:
    token = CancellationToken(asyncio.get_running_loop())
    release = threading.Event()

    def blocked() -> None:
        release.wait(10)
        time.sleep(0)

    async def in_thread() -> None:
        # shield: cancelling the awaiting task does not end the thread, as with a real plain def
        await asyncio.shield(asyncio.to_thread(blocked))

    done = await supervise(in_thread(), token=token, timeout_s=0.05, grace_s=0.05, interruptible=False)
    release.set()
    assert done.ending == "timed_out"
    assert done.forced
