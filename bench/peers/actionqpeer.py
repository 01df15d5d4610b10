"""actionq: ``python -m service worker`` with the ``benchnoop`` plugin, concurrency 100, defaults otherwise.

Producer: ``JobClient.submit`` calls gathered at once; the client coalesces concurrent submits
into one submit script call per batch (``service/client/store.py``, up to 200 a call). Results:
``JobHandle.result()`` (pushed on the job's channel). Cancel: ``JobHandle.cancel()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.harness import BenchEnv, Worker, plugin_entry
from bench.jobs import Workload
from bench.peers.base import CONCURRENCY, JOB_TIMEOUT_S, Contender
from service.client.client import JobClient
from service.client.handle import JobHandle

__all__ = ["Actionq", "Producer", "open_producer"]

PLUGIN = "benchnoop"
ACTIONS = {"incr": "incr", "noop": "noop"}
WORKER: dict[str, Any] = {"concurrency": CONCURRENCY}  # everything else: the service defaults


class Producer:
    """The drain phase's producer: one :class:`JobClient`, every submit gathered."""

    def __init__(self, client: JobClient) -> None:
        self.client = client

    async def enqueue(self, n: int, body: str) -> None:
        """Submit ``n`` ``body`` jobs at once; the client batches them."""
        action = ACTIONS[body]
        await asyncio.gather(*(self.client.submit(PLUGIN, action) for _ in range(n)))

    async def close(self) -> None:
        """Close the client."""
        await self.client.close()


async def open_producer(workload: Workload) -> Producer:
    """Connect (before the bench says go); the manifest is read by the first submit (a cold cache)."""
    return Producer(await JobClient.connect(workload.url, namespace=workload.namespace))


class Actionq(Contender):
    """actionq's worker (a subprocess started by :class:`BenchEnv`) and the bench's :class:`JobClient`."""

    label = "actionq"
    headline = "actionq (concurrency 100, defaults)"
    producer_kind = "actionq"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.worker: Worker | None = None

    @property
    def pid(self) -> int:
        assert self.worker is not None
        return self.worker.pid

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, **WORKER, "other": "service defaults (records and events on)"},
            "producer": "JobClient.submit(...) x N gathered at once (coalesced: up to 200 submits per script call)",
            "results": "JobHandle.result() (pushed on the job's channel)",
            "cancel": "JobHandle.cancel() (durable flag + push to the worker)",
        }

    async def start(self) -> None:
        config = {"plugins": [plugin_entry(PLUGIN)], **WORKER}
        self.worker = await self.env.start_worker(config, self.workload.env())

    async def stop(self) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await self.env.stop_worker(worker)

    async def stamp(self) -> float:
        handle = await self.env.client.submit(PLUGIN, "stamp")
        return float(await handle.result(timeout=JOB_TIMEOUT_S))

    async def submit_hold(self, key: str) -> JobHandle:
        return await self.env.client.submit(PLUGIN, "hold_key", {"key": key})

    async def cancel(self, handle: Any) -> None:
        await handle.cancel("bench", timeout=JOB_TIMEOUT_S)
