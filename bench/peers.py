"""The optional peers' contenders (SAQ, taskiq), each with a :mod:`bench.peerworker` process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.contenders import CONCURRENCY, JOB_TIMEOUT_S, RESULT_POLL_S, Contender
from bench.harness import REPO_ROOT, WORKER_READY_TIMEOUT_S, BenchEnv, BenchError
from bench.peerworker import SAQ_SWEEP_S

__all__ = ["Saq", "Taskiq"]

READY_POLL_S = 0.02


class PeerProcess(Contender):
    """A peer's worker: ``python -m bench.peerworker KIND URL QUEUE CONCURRENCY``."""

    kind: str

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"actionq-bench-{self.kind}-", suffix=".log")  # noqa: SIM115

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        args = [sys.executable, "-m", "bench.peerworker", self.kind, self.env.url, self.queue, str(CONCURRENCY)]
        self.proc = await asyncio.to_thread(
            subprocess.Popen, args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(self._terminate, self.proc)
            self.proc = None
        self.log.close()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, SIGKILL after 10 s; a worker that had died by itself is an error."""
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode not in (0, -15):
            raise BenchError(f"{self.kind} worker exited with {proc.returncode}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of what the worker wrote."""
        return Path(self.log.name).read_text(errors="replace")[-2000:]


class Saq(PeerProcess):
    """SAQ: its Redis queue, ``Queue.enqueue``; ``Queue.apply`` for a result."""

    kind = label = "saq"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        from bench.peerworker import saq_queue

        self.client = saq_queue(env.url, self.queue)

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {
                "processes": 1,
                "concurrency": CONCURRENCY,
                "timers.sweep_s": SAQ_SWEEP_S,
                "other": "SAQ defaults otherwise (sweep every 60 s; job timeout 10 s, heartbeat off, retries 1)",
            },
            "worker ready": "its first sweep done (the sweep lock key exists) before any job is enqueued",
            "why the sweep interval": "a sweep aborts a job caught between dequeue and active (tobymao/saq#124)",
            "client": "Queue.enqueue, sequential; Queue.apply(timeout=60) for a result (also the job's timeout)",
            "drain probe": "ZCARD of the queue's incomplete set (Queue.count('incomplete'))",
        }

    async def start(self) -> None:
        """Start the worker and wait for its first sweep, which would abort a job dequeued meanwhile."""
        await super().start()
        sweep_lock = self.client.namespace("sweep")  # SETEX'd in the same script as the sweep's LRANGE
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while not await self.probe.exists(sweep_lock):
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"saq worker not ready (exit code {self.proc.returncode}):\n{self.log_tail()}")
            await asyncio.sleep(READY_POLL_S)

    async def stop(self) -> None:
        await super().stop()
        await self.client.disconnect()

    async def enqueue_noops(self, n: int) -> None:
        for _ in range(n):
            await self.client.enqueue("noop")

    async def unfinished(self) -> int:
        self.probe_calls["zcard"] += 1
        return int(await self.client.count("incomplete"))

    async def stamp_job(self) -> float:
        return float(await self.client.apply("stamp", timeout=JOB_TIMEOUT_S, poll_interval=RESULT_POLL_S))


class Taskiq(PeerProcess):
    """taskiq with taskiq-redis: ``ListQueueBroker`` plus ``RedisAsyncResultBackend``; ``kiq()``."""

    kind = label = "taskiq"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        from bench.peerworker import taskiq_broker

        self.broker = taskiq_broker(env.url, self.queue)
        self.enqueued = 0
        self.baseline_keys = 0

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "max_async_tasks": CONCURRENCY, "other": "taskiq defaults"},
            "broker": "ListQueueBroker (LPUSH/BRPOP) + RedisAsyncResultBackend (result TTL 3600 s)",
            "client": f"task.kiq(), sequential; wait_result(check_interval={RESULT_POLL_S})",
            "drain probe": "DBSIZE (one result key per finished job), then LLEN of the queue",
        }

    async def start(self) -> None:
        await self.broker.startup()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.broker.shutdown()

    async def enqueue_noops(self, n: int) -> None:
        self.probe_calls["dbsize"] += 1
        self.baseline_keys = int(await self.probe.dbsize())
        self.enqueued = n
        task = self.broker.find_task("noop")
        for _ in range(n):
            await task.kiq()

    async def unfinished(self) -> int:
        self.probe_calls["dbsize"] += 1
        keys = int(await self.probe.dbsize()) - self.baseline_keys  # results, plus the queue list if not empty
        if keys < self.enqueued:
            return self.enqueued - keys
        self.probe_calls["llen"] += 1
        return int(await self.probe.llen(self.queue))

    async def stamp_job(self) -> float:
        task = await self.broker.find_task("stamp").kiq()
        result = await task.wait_result(check_interval=RESULT_POLL_S, timeout=JOB_TIMEOUT_S)
        return float(result.return_value)
