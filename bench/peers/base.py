"""What ``bench compare`` needs of a contender, and the worker process every peer shares.

A :class:`Contender` is one job queue with one worker process on the bench's private Redis and
a queue (and counter key) of its own. The bench, in its own process, uses the library's client
for the latency phase (:meth:`Contender.stamp`: enqueue a ``stamp`` job and wait for its result
the way the library's docs say) and the cancel phase (:meth:`Contender.submit_hold`,
:meth:`Contender.cancel`); the drain phase runs the library's producer in a process of its own
(:mod:`bench.producer`, :meth:`Contender.producer_kind`). A peer whose client is blocking sets
``sync_client``: its calls run on one thread of their own, one at a time.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from bench.jobs import Workload

if TYPE_CHECKING:  # a peer's worker process imports this module: it must not load actionq
    from bench.harness import BenchEnv

__all__ = [
    "CONCURRENCY",
    "JOB_TIMEOUT_S",
    "RESULT_POLL_S",
    "Contender",
    "PeerError",
    "PeerProcess",
    "gather_window",
    "library",
]

# Jobs one worker runs at once (Dramatiq and RQ say their own; see their modules).
CONCURRENCY = 100
# Clients that poll for a result (arq, taskiq) poll this often: faster than their defaults.
RESULT_POLL_S = 0.005
JOB_TIMEOUT_S = 60.0
# Enqueues in flight at once for a library without a batch API (its client's connections).
ENQUEUE_WINDOW = 100
_STOP_TIMEOUT_S = 15.0
# A cold interpreter plus the library's imports takes a few seconds on a busy 2-core machine.
READY_TIMEOUT_S = 30.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class PeerError(RuntimeError):
    """A contender's worker did not start, died, or lost a job."""


class Contender(ABC):
    """One job queue with one worker process (async context manager: started and warm, then stopped)."""

    label: str
    headline: str = ""
    """The report table's row name: the label and the settings that matter."""
    producer_kind: str
    """The :mod:`bench.peers` module name (``bench.peers.<kind>peer``) the producer process runs."""
    cancel_note: str = ""
    """Why this contender has no cancel of a running job (empty: it has one)."""
    cancel_spread_s = 0.01
    """The random part of the pause before each cancel: the period of the worker's cancel check, if it polls,
    so that cancels land at a random phase of it (as a user's would), not just after the last check."""
    sync_client = False
    max_drain_jobs: int | None = None
    """At most this many jobs per drain (a worker that is slow for a reason of its own, e.g. a 0.5 s poll)."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.probe = Redis.from_url(env.url)
        slug = re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")
        self.queue = f"{env.namespace}-{slug}-{uuid.uuid4().hex[:6]}"
        self._thread: ThreadPoolExecutor | None = None

    @property
    def workload(self) -> Workload:
        """What the worker and producer processes are told (``BENCH_*`` variables)."""
        return Workload(
            url=self.env.url,
            queue=self.queue,
            counter=f"{self.queue}:count",
            concurrency=CONCURRENCY,
            namespace=self.env.namespace,
        )

    @property
    def supports_cancel(self) -> bool:
        """Whether the cancel phase runs for this contender."""
        return not self.cancel_note

    async def __aenter__(self) -> Contender:
        try:
            await self.start()
            await self.stamp()  # warm-up: the worker is up and has run one job
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the worker, close the bench's connections."""
        try:
            await self.stop()
        finally:
            await self.probe.aclose()
            if self._thread is not None:
                self._thread.shutdown(wait=False)

    async def in_thread(self, call: Callable[[], Any]) -> Any:
        """Run a blocking client call on this contender's own thread (one call at a time)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bench-{self.producer_kind}")
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def timed_stamp(self) -> tuple[float, float, float]:
        """One ``stamp`` job: (``time.time()`` at enqueue, at the job's start, when the result arrived)."""
        if self.sync_client:
            return await self.in_thread(self._timed_stamp_sync)  # type: ignore[no-any-return]
        enqueued = time.time()
        started = await self.stamp()
        return enqueued, started, time.time()

    def _timed_stamp_sync(self) -> tuple[float, float, float]:
        enqueued = time.time()
        started = self.stamp_sync()
        return enqueued, started, time.time()

    async def stamp(self) -> float:
        """Enqueue one ``stamp`` job and await its result (the job's ``time.time()`` at start)."""
        return float(await self.in_thread(self.stamp_sync))

    def stamp_sync(self) -> float:
        """:meth:`stamp` for a blocking client (``sync_client``)."""
        raise NotImplementedError

    async def submit_hold(self, key: str) -> Any:
        """Enqueue one ``hold(key)`` job; what :meth:`cancel` needs to cancel it."""
        raise NotImplementedError(self.cancel_note)

    async def cancel(self, handle: Any) -> None:
        """Ask for the held job to be cancelled, the way the library's docs say."""
        raise NotImplementedError(self.cancel_note)

    @property
    @abstractmethod
    def pid(self) -> int:
        """The worker process."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the report says about this contender's worker, producer and client."""

    @abstractmethod
    async def start(self) -> None:
        """Start the worker process."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the worker process."""


class PeerProcess(Contender):
    """A peer's worker: ``python -m bench.peerworker KIND`` with the :class:`Workload` in its environment."""

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="actionq-bench-")) / f"{self.producer_kind}.log"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise PeerError(f"{self.label}: worker not started")
        return self.proc.pid

    def worker_env(self) -> dict[str, str]:
        """Our environment without ``ACTIONQ_*``, plus the workload."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
        return env | self.workload.env() | {"PYTHONUNBUFFERED": "1"}

    async def start(self) -> None:
        self.proc = await asyncio.to_thread(self._spawn)

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "bench.peerworker", self.producer_kind]
        with self.log_path.open("wb") as log:
            return subprocess.Popen(
                args, cwd=REPO_ROOT, env=self.worker_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    async def wait_for(self, ready: Callable[[], Awaitable[bool]], what: str) -> None:
        """Poll ``ready`` until true; fail if the worker dies or takes too long."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await ready():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                code = None if self.proc is None else self.proc.returncode
                raise PeerError(f"{self.label}: {what} (worker exit code {code}):\n{self.log_tail()}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            await asyncio.to_thread(self._terminate, proc)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, SIGKILL if it lingers; a worker that had died by itself is an error."""
        died = proc.poll()
        if died is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif died != 0:
            raise PeerError(f"{self.label} worker had exited with {died}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of what the worker wrote."""
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


def library(name: str) -> Any:
    """Import an optional peer's module, typed ``Any``: the bench type-checks alike with or without it."""
    return importlib.import_module(name)


async def gather_window(make: Callable[[], Awaitable[Any]], n: int, window: int = ENQUEUE_WINDOW) -> None:
    """Run ``make()`` ``n`` times with at most ``window`` in flight: bulk enqueue without a batch API."""
    left = n

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await make()

    await asyncio.gather(*(lane() for _ in range(min(window, n))))
