"""``gateway``: the HTTP gateway beside the Python client, on one private Redis (issue 15's figures).

One worker (``benchnoop`` and ``benchprog``, concurrency 200) and one gateway process
(``python -m service gateway``, uvicorn, its defaults); the bench process is the client, with one
``aiohttp.ClientSession`` (keep-alive, HTTP/1.1) and one :class:`JobClient`. aiohttp, not httpx:
on this machine httpx spent 1.5-1.9 ms of the client's own CPU per request (aiohttp 0.09), so an
httpx client measured httpx.

* **submit**: ``N`` no-op jobs, 64 requests in flight, ``POST /v1/jobs`` each; against the Python
  client's gathered ``submit`` in the same run. Jobs/s for both, and their ratio; and the Python
  client's ``submit_many`` of ``N`` jobs at once (issue 14's fan-out figure). The HTTP submits
  again with the worker paused, after the batches (what the gateway ingests when the two cores
  are shared by Redis, the gateway and this client only; the target's figure is the first).
* **added latency**: one submit at a time, alternating HTTP and Python: p50/p99 of each, and the
  difference of the p99s (what going through the gateway adds).
* **batch**: ``POST /v1/jobs:batch`` of 500 jobs each, 4 requests in flight: once with the worker
  draining them (the target's figure), once with it paused (what the gateway ingests when the two
  cores are shared by Redis, the gateway and this client only).
* **SSE**: 1,000 ``GET /v1/jobs/{id}/events`` connections at once, 10 per job on 100 jobs that
  report 20 progress updates 100 ms apart (each job at its own phase of the 100 ms: not all at
  once), each stamped with the worker's wall clock when it was reported: publish → received by
  this process (the same machine's clock), p50/p99 over every update of every follower reported
  once all 1,000 are connected (the connecting itself, a second or two, is its own figure); the
  gateway's peak RSS (VmHWM) over the entry.

The receiving side is this process parsing 1,000 streams on one event loop: its own delay is in
the figure (a browser's would be too). It reads each stream a chunk at a time and splits the
events out, as an ``EventSource`` does (not one await per line), and its garbage collector is
off while it follows (:func:`client_gc_held`: a full collection of its heap of 1,000 streams
paused every receipt for 50-120 ms, which no browser does). Nothing is asserted: figures are
reported with targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, BenchEnv, BenchError, plugin_entry
from bench.options import RunOptions
from bench.procstats import rss_mib
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentile
from service.client.client import JobSpec
from service.processes.embedded import free_port

try:
    import aiohttp
except ImportError:  # the `peers` extra has it; the other entries run without
    HAVE_AIOHTTP = False
else:
    HAVE_AIOHTTP = True

__all__ = ["HAVE_AIOHTTP", "Followers", "client_gc_held", "run", "start_gateway"]

READY_TIMEOUT_S = 30.0
IN_FLIGHT = 64
BATCH = 500
FOLLOWED_JOBS = 100
FOLLOWERS_PER_JOB = 10
UPDATES = 20
UPDATE_SPACING_S = 0.1


async def run(options: RunOptions) -> EntryResult:
    """Start a worker and a gateway on a private Redis, then measure each phase."""
    if not HAVE_AIOHTTP:
        raise BenchError("bench gateway needs aiohttp (pip install -e '.[peers]')")
    n = options.pick(full=5_000, quick=1_000)
    batched = options.pick(full=20_000, quick=5_000)
    metrics = _declare(Metrics())
    async with BenchEnv() as env:
        plugins = [plugin_entry("benchnoop"), plugin_entry("benchprog")]
        await env.start_worker({"plugins": plugins, "concurrency": 200})
        gateway = await start_gateway(env)
        try:
            connector = aiohttp.TCPConnector(limit=FOLLOWED_JOBS * FOLLOWERS_PER_JOB + IN_FLIGHT)
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(gateway.url, connector=connector, timeout=timeout) as http:
                await _warm(http, env)
                await _submit_rates(http, env, n, metrics)
                await _drained(env)
                await _added_latency(http, env, options.pick(full=300, quick=100), metrics)
                await _batch_rate(http, batched, metrics)
                await _drained(env)
                await env.client.control("pause")
                await _batch_rate(http, batched, metrics, "HTTP batch submit, worker paused")
                await _http_rate(http, n, metrics, "HTTP submit, worker paused")
                await env.client.control("resume")
                await _drained(env)
                await _sse(http, env, metrics)
            metrics.add("gateway peak RSS", rss_mib(gateway.proc.pid, "VmHWM"))
        finally:
            gateway.stop()
    settings = {
        "worker": {"processes": 1, "concurrency": 200, "plugins": ["benchnoop", "benchprog"]},
        "gateway": "python -m service gateway (uvicorn, one process, no token: loopback)",
        "client": f"aiohttp.ClientSession, keep-alive, {IN_FLIGHT} requests in flight; JobClient for the Python side",
        "submit_jobs": n,
        "batch_jobs": batched,
        "sse": {"jobs": FOLLOWED_JOBS, "followers_per_job": FOLLOWERS_PER_JOB, "updates": UPDATES},
    }
    return EntryResult("gateway", settings, metrics.metrics(), [__doc__.split("\n\n")[1].replace("\n", " ")])


def _declare(metrics: Metrics) -> Metrics:
    metrics.declare("HTTP submit", "jobs/s", f"POST /v1/jobs, {IN_FLIGHT} in flight", Target(">=", 3000))
    metrics.declare("HTTP submit, worker paused", "jobs/s", "as above, no worker draining them meanwhile")
    metrics.declare("Python submit", "jobs/s", "JobClient.submit, gathered (coalesced)")
    metrics.declare("Python submit_many", "jobs/s", "JobClient.submit_many of them all at once", Target(">=", 10_000))
    metrics.declare("HTTP / Python submit", "ratio", "same run")
    for side in ("HTTP", "Python"):
        for q in ("p50", "p99"):
            metrics.declare(f"{side} submit latency {q}", "ms", "one submit at a time")
    metrics.declare("added p99", "ms", "HTTP p99 - Python p99", Target("<=", 2.0))
    metrics.declare("HTTP batch submit", "jobs/s", f"POST /v1/jobs:batch, {BATCH} a request", Target(">=", 20_000))
    metrics.declare("HTTP batch submit, worker paused", "jobs/s", "as above, no worker draining them meanwhile")
    metrics.declare("SSE connect 1,000 followers", "s", "from the first request to the last first event")
    for q in ("p50", "p99"):
        target = Target("<=", 10.0) if q == "p99" else None
        metrics.declare(f"SSE publish->receive {q}", "ms", "1,000 followers connected, updates after that", target)
    metrics.declare("SSE updates received", "%", "of those reported, over every follower")
    metrics.declare("gateway peak RSS", "MiB", "VmHWM over the entry", Target("<=", 150))
    return metrics


class _Gateway:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn_gateway(env: BenchEnv) -> _Gateway:
    port = free_port()
    fd, name = tempfile.mkstemp(prefix="actionq-bench-gateway-", suffix=".log")
    os.close(fd)
    path = Path(name)
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "gateway", "--port", str(port)],
            env=env.worker_env(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return _Gateway(proc, f"http://127.0.0.1:{port}", path)


def _tail(gateway: _Gateway) -> str:
    return gateway.log_path.read_text(errors="replace")[-2000:]


async def start_gateway(env: BenchEnv) -> _Gateway:
    """``python -m service gateway`` on a free port against ``env``'s Redis, once ready (``bench dashboard`` too)."""
    gateway = _spawn_gateway(env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as probe:
        while time.monotonic() < deadline:
            if gateway.proc.poll() is not None:
                raise BenchError(f"the gateway exited with {gateway.proc.returncode}: {_tail(gateway)}")
            try:
                async with probe.get(f"{gateway.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as answer:
                    if answer.status == 200:
                        return gateway
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    gateway.stop()
    raise BenchError(f"the gateway was not ready within {READY_TIMEOUT_S:g}s: {_tail(gateway)}")


_NOOP = {"plugin": "benchnoop", "action": "noop"}


async def _post_job(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/jobs", json=_NOOP) as answer:
        body = await answer.read()
        if answer.status != 202:
            raise BenchError(f"POST /v1/jobs: {answer.status} {body[:300]!r}")


async def _warm(http: aiohttp.ClientSession, env: BenchEnv) -> None:
    """The registry read, the connection pools and the scripts, before anything is timed."""
    await asyncio.gather(*(_post_job(http) for _ in range(IN_FLIGHT)))
    await asyncio.gather(*(env.client.submit("benchnoop", "noop") for _ in range(100)))


async def _drained(env: BenchEnv) -> None:
    """Wait until the worker has run what was submitted so far (a last job behind it, first in first out)."""
    marker = await env.client.submit("benchnoop", "noop")
    await marker.result(timeout=300)
    await asyncio.sleep(0.5)


async def _submit_rates(http: aiohttp.ClientSession, env: BenchEnv, n: int, metrics: Metrics) -> None:
    http_rate = await _http_rate(http, n, metrics, "HTTP submit")
    started = time.perf_counter()
    await asyncio.gather(*(env.client.submit("benchnoop", "noop") for _ in range(n)))
    python_rate = n / (time.perf_counter() - started)
    started = time.perf_counter()
    written = await env.client.submit_many([JobSpec("benchnoop", "noop")] * n)
    many_rate = n / (time.perf_counter() - started)
    if any(isinstance(result, Exception) for result in written):
        raise BenchError(f"submit_many: {next(r for r in written if isinstance(r, Exception))}")
    metrics.add("Python submit", python_rate)
    metrics.add("Python submit_many", many_rate)
    metrics.add("HTTP / Python submit", http_rate / python_rate)


async def _http_rate(http: aiohttp.ClientSession, n: int, metrics: Metrics, name: str) -> float:
    """``n`` submits, ``IN_FLIGHT`` at a time: jobs/s, added to ``metrics`` as ``name``."""
    left = n

    async def one_lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _post_job(http)

    started = time.perf_counter()
    await asyncio.gather(*(one_lane() for _ in range(IN_FLIGHT)))
    rate = n / (time.perf_counter() - started)
    metrics.add(name, rate)
    return rate


async def _added_latency(http: aiohttp.ClientSession, env: BenchEnv, samples: int, metrics: Metrics) -> None:
    timings: dict[str, list[float]] = {"HTTP": [], "Python": []}
    for _ in range(samples):
        started = time.perf_counter()
        await _post_job(http)
        timings["HTTP"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await env.client.submit("benchnoop", "noop")
        timings["Python"].append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)  # apart, as separate callers' submits are
    for side, values in timings.items():
        for q in (50, 99):
            metrics.add(f"{side} submit latency p{q}", percentile(values, q))
    metrics.add("added p99", percentile(timings["HTTP"], 99) - percentile(timings["Python"], 99))


async def _batch_rate(http: aiohttp.ClientSession, n: int, metrics: Metrics, name: str = "HTTP batch submit") -> None:
    requests = [[_NOOP] * BATCH for _ in range(n // BATCH)]

    async def lane() -> None:
        while requests:
            async with http.post("/v1/jobs:batch", json=requests.pop()) as answer:
                body = await answer.read()
            results = json.loads(body).get("results", []) if answer.status == 200 else []
            if answer.status != 200 or any(r.get("status") != 202 for r in results):
                raise BenchError(f"POST /v1/jobs:batch: {answer.status} {body[:300]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(4)))
    metrics.add(name, (n // BATCH) * BATCH / (time.perf_counter() - started))


async def _sse(http: aiohttp.ClientSession, env: BenchEnv, metrics: Metrics) -> None:
    # 2 s for every follower to connect, then each job at its own phase of the 100 ms (jobs started
    # together would report in lockstep: a burst of every update at once, ten times a second).
    submits = (
        env.client.submit(
            "benchprog",
            "report_timed",
            {"n": UPDATES, "interval_s": UPDATE_SPACING_S, "lead_s": 2.0 + UPDATE_SPACING_S * i / FOLLOWED_JOBS},
        )
        for i in range(FOLLOWED_JOBS)
    )
    handles = await asyncio.gather(*submits)
    follow = Followers(FOLLOWED_JOBS * FOLLOWERS_PER_JOB)
    started = time.time()
    with client_gc_held():
        await asyncio.gather(*(follow.one(http, h.job_id) for h in handles for _ in range(FOLLOWERS_PER_JOB)))
    connected = max(follow.first_events) if follow.first_events else started
    steady = [latency for published, latency in follow.samples if published >= connected]
    metrics.add("SSE connect 1,000 followers", connected - started)
    metrics.add("SSE publish->receive p50", percentile(steady, 50))
    metrics.add("SSE publish->receive p99", percentile(steady, 99))
    metrics.add("SSE updates received", 100 * follow.received / (FOLLOWED_JOBS * FOLLOWERS_PER_JOB * UPDATES))


@contextlib.contextmanager
def client_gc_held() -> Iterator[None]:
    """This process's garbage collector off while it stands in for the followers' browsers.

    With 1,000 streams open in one Python heap, a full collection here paused every stream's
    receipt for 50-120 ms (seen with a ``gc.callbacks`` probe), an artifact of the instrument that
    no browser has; the gateway's collector is not touched. Collected once before, re-enabled after.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _data(event: bytes) -> bytes | None:
    """The ``data`` field of one SSE event (ours are one line), ``None`` for a comment."""
    return next((line[5:] for line in event.split(b"\n") if line.startswith(b"data:")), None)


class Followers:
    """Readers of ``expected`` job event streams: first events, (published, latency) samples, updates
    received, and the gateway's RSS once all are open (``bench gateway`` and ``bench dashboard``)."""

    def __init__(self, expected: int, *, connect_within_s: float = 30.0) -> None:
        self.expected = expected
        self.connect_within_s = connect_within_s
        self.samples: list[tuple[float, float]] = []
        self.first_events: list[float] = []
        self.received = 0
        self.rss = float("nan")
        self.all_open = asyncio.Event()

    async def one(self, http: aiohttp.ClientSession, job_id: str) -> None:
        """Follow one job's events to its terminal state, as a job page does."""
        seen: set[int] = set()
        buffered, first = b"", True
        async with http.get(f"/v1/jobs/{job_id}/events") as answer:
            # What arrived, split into events (a blank line ends each), as an EventSource parses
            # it: one read per chunk, not one await per line (4 lines an event, 1,000 streams).
            async for chunk in answer.content.iter_any():
                now = time.time()
                *events, buffered = (buffered + chunk).split(b"\n\n")
                for data in (_data(event) for event in events):
                    if data is None:  # a comment (keep-alive)
                        continue
                    if first:  # the snapshot a stream starts with: this page is live from now on
                        first = False
                        self._opened(now)
                    self._sample(json.loads(data), now, seen)
        self.received += len(seen)

    def _opened(self, now: float) -> None:
        self.first_events.append(now)
        if len(self.first_events) == self.expected:
            self.all_open.set()

    def _sample(self, snapshot: dict[str, Any], now: float, seen: set[int]) -> None:
        progress = snapshot.get("progress") or {}
        step, stamp = progress.get("current_step"), (progress.get("details") or {}).get("t")
        if isinstance(step, int) and isinstance(stamp, float) and step not in seen:
            seen.add(step)
            self.samples.append((stamp, (now - stamp) * 1000))

    async def sample_rss(self, pid: int) -> None:
        """The gateway's RSS once every stream has had its first event (all are open)."""
        try:
            await asyncio.wait_for(self.all_open.wait(), self.connect_within_s)
        except TimeoutError:
            return  # not all connected: the figure stays NaN (and the connect figure says so too)
        self.rss = rss_mib(pid, "VmRSS")
