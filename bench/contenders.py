"""The job queues the throughput and latency entries compare, each with one worker process.

A :class:`Contender` starts its worker on the bench's private Redis (:class:`BenchEnv`), enqueues
no-op jobs with its own client, says cheaply whether everything it enqueued has finished
(:meth:`Contender.unfinished`, counting the Redis calls it makes so they can be subtracted), and runs
one ``stamp`` job (the job returns ``time.time()`` when it started). :func:`contenders` lists
actionq, arq with defaults, arq tuned, and each optional peer that is installed (:mod:`bench.peers`).
"""

from __future__ import annotations

import importlib.util
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from redis.asyncio import Redis

from bench.harness import BenchEnv, Worker, plugin_entry
from bench.rawarq import ArqWorkerProcess, arq_pool
from bench.redisstats import peak_rss_mib

__all__ = ["CONCURRENCY", "Contender", "contenders", "missing_peers"]

# Jobs one worker runs at once: arq tuned's max_jobs, given to actionq and the peers too.
CONCURRENCY = 100
PLUGIN = "benchnoop"
ACTIONQ_WORKER: dict[str, Any] = {"concurrency": CONCURRENCY}  # poll_delay_s: the service default
# Clients waiting for a result poll this often where the library polls (arq, taskiq; not actionq).
RESULT_POLL_S = 0.005
JOB_TIMEOUT_S = 60.0
PEERS = {"saq": ("saq",), "taskiq": ("taskiq", "taskiq_redis"), "streaq": ("streaq",)}


class Contender(ABC):
    """One job queue with one worker process (async context manager: started, then stopped)."""

    label: str
    max_run_jobs: int | None = None
    """At most this many jobs per throughput run (None: as many as the entry asks for)."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.probe = Redis.from_url(env.url)
        self.probe_calls: Counter[str] = Counter()
        self.queue = f"{env.namespace}-{uuid.uuid4().hex[:6]}"

    async def __aenter__(self) -> Contender:
        try:
            await self.start()
            await self.stamp_job()  # warm-up: the worker is up and has run one job
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the worker and close the connections."""
        await self.stop()
        await self.probe.aclose()

    def peak_rss_mib(self) -> float:
        """The worker process's peak RSS so far."""
        return peak_rss_mib(self.pid)

    @property
    @abstractmethod
    def pid(self) -> int:
        """The worker process."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the report says about this contender's worker and client."""

    @abstractmethod
    async def start(self) -> None:
        """Start the worker process."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the worker process."""

    @abstractmethod
    async def enqueue_noops(self, n: int) -> None:
        """Enqueue ``n`` no-op jobs, one after the other, with the library's own client."""

    @abstractmethod
    async def unfinished(self) -> int:
        """How many jobs enqueued so far have not finished (counting the calls in ``probe_calls``)."""

    @abstractmethod
    async def stamp_job(self) -> float:
        """Enqueue one ``stamp`` job and await its result: the job's ``time.time()`` at start."""

    async def _zcard(self, key: str) -> int:
        self.probe_calls["zcard"] += 1
        return int(await self.probe.zcard(key))


class Actionq(Contender):
    """actionq: ``python -m service worker`` with the ``benchnoop`` plugin; ``JobClient.submit``."""

    label = "actionq"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.worker: Worker | None = None
        self.queue = env.client.keys.queue(PLUGIN)

    @property
    def pid(self) -> int:
        assert self.worker is not None
        return self.worker.pid

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, **ACTIONQ_WORKER, "poll_delay_s": "service default", "log_level": "WARNING"},
            "client": "JobClient.submit(..., validate=True) (manifest cached by the client), sequential",
            "drain probe": f"ZCARD {self.queue} (the queue entry is removed when the job finishes)",
        }

    async def start(self) -> None:
        self.worker = await self.env.start_worker({"plugins": [plugin_entry(PLUGIN)], **ACTIONQ_WORKER})

    async def stop(self) -> None:
        if self.worker is not None:
            await self.env.stop_worker(self.worker)
            self.worker = None

    async def enqueue_noops(self, n: int) -> None:
        for _ in range(n):
            await self.env.client.submit(PLUGIN, "noop")

    async def unfinished(self) -> int:
        return await self._zcard(self.queue)

    async def stamp_job(self) -> float:
        handle = await self.env.client.submit(PLUGIN, "stamp")
        return float(await handle.result(timeout=JOB_TIMEOUT_S))


class Arq(Contender):
    """Raw arq 0.28 (:mod:`bench.arqworker`), JSON serialization, ``ArqRedis.enqueue_job``."""

    def __init__(
        self, env: BenchEnv, label: str, poll_delay_s: float, max_jobs: int, max_run_jobs: int | None = None
    ) -> None:
        super().__init__(env)
        self.label = label
        self.poll_delay_s = poll_delay_s
        self.max_jobs = max_jobs
        self.max_run_jobs = max_run_jobs
        self.tmp = tempfile.TemporaryDirectory(prefix="actionq-bench-arq-")
        self.process: ArqWorkerProcess | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        assert self.process.proc is not None
        return self.process.proc.pid

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "poll_delay_s": self.poll_delay_s, "max_jobs": self.max_jobs},
            "worker_other": "arq defaults otherwise (allow_abort_jobs off, keep_result 3600 s), JSON serializer",
            "client": f"ArqRedis.enqueue_job, sequential; Job.result(poll_delay={RESULT_POLL_S})",
            "drain probe": "ZCARD of the queue (arq removes a job's entry when it finishes)",
        }

    async def start(self) -> None:
        redis = await arq_pool(self.env.url)
        log = Path(self.tmp.name) / "arq.log"
        self.process = ArqWorkerProcess(
            redis, self.env.url, self.queue, self.poll_delay_s, log, max_jobs=self.max_jobs, abort=False
        )
        await self.process.__aenter__()

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()
            await self.process.redis.aclose()
            self.process = None
        self.tmp.cleanup()

    @property
    def redis(self) -> Any:
        assert self.process is not None
        return self.process.redis

    async def enqueue_noops(self, n: int) -> None:
        for _ in range(n):
            await self.redis.enqueue_job("noop", _queue_name=self.queue)

    async def unfinished(self) -> int:
        return await self._zcard(self.queue)

    async def stamp_job(self) -> float:
        job = await self.redis.enqueue_job("stamp", _queue_name=self.queue)
        return float(await job.result(timeout=JOB_TIMEOUT_S, poll_delay=RESULT_POLL_S))


def missing_peers() -> list[str]:
    """Optional peers that are not installed (or not wired into the bench)."""
    wired = {"saq", "taskiq"}
    notes = []
    for peer, modules in PEERS.items():
        if not all(importlib.util.find_spec(m) is not None for m in modules):
            notes.append(f"{peer}: not installed")
        elif peer not in wired:
            notes.append(f"{peer}: installed but not measured yet (no adapter in bench/contenders.py)")
    return notes


def contenders(env: BenchEnv) -> list[Contender]:
    """actionq, arq defaults, arq tuned, and each installed peer; none started yet."""
    found: list[Contender] = [
        Actionq(env),
        Arq(env, "arq defaults", poll_delay_s=0.5, max_jobs=10, max_run_jobs=1_000),
        Arq(env, "arq tuned", poll_delay_s=0.01, max_jobs=CONCURRENCY),
    ]
    from bench.peers import Saq, Taskiq  # they import this module

    if all(importlib.util.find_spec(m) is not None for m in PEERS["saq"]):
        found.append(Saq(env))
    if all(importlib.util.find_spec(m) is not None for m in PEERS["taskiq"]):
        found.append(Taskiq(env))
    return found
