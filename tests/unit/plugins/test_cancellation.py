"""The cancellation token an action sees, set from the loop and waited for in a thread (no Redis)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.errors import CancellationRequested
from service.plugins.cancellation import CancellationToken


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
