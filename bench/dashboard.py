"""``dashboard``: the dashboard's pages on a full Redis, and 200 job pages open at once (issue 16's targets).

One private Redis, one worker (``benchnoop``, ``benchprog`` and the bundled ``long_running``,
concurrency 200) and one gateway process (``python -m service gateway``, uvicorn, its defaults);
the bench process is the client, one ``aiohttp.ClientSession`` (aiohttp for the reason
``bench/gateway.py`` gives: httpx's own CPU per request would be in the figures).

* **seed**: ``N`` no-op jobs (100,000) through the Python client's coalesced ``submit``
  (5,000 gathered at a time), run by the worker: real records, and the events stream as the
  workers write it (capped at ``events_max_len``); then 1,000 ``long_running.fail`` jobs, which
  the worker settles into real dead letters. Nothing is written behind the services' back.
* **pages**: ``GET /``, ``/ui/jobs`` and ``/ui/dead-letters`` one at a time after two warm-ups,
  the time from sending the request to the last byte at this client over loopback (an upper
  bound on the server's time): median and p95 over ``R`` requests each.
* **200 job pages**: 200 jobs report 20 progress updates 100 ms apart (each at its own phase),
  and 200 ``GET /v1/jobs/{id}/events`` connections are open at once, one per job — what a job
  page opens for a running job. Publish (the worker's wall clock in the update) → received here,
  p50/p99 over the updates reported once all 200 are connected; the updates received; the
  gateway's RSS with all 200 open, and its peak (VmHWM) over the entry.

Nothing is asserted: figures are reported with targets.
"""

from __future__ import annotations

import asyncio
import time

from bench.gateway import HAVE_AIOHTTP, Followers, client_gc_held, start_gateway
from bench.harness import BenchEnv, BenchError, plugin_entry
from bench.options import RunOptions
from bench.procstats import rss_mib
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentile

if HAVE_AIOHTTP:
    import aiohttp

__all__ = ["run"]

SUBMIT_CHUNK = 5_000  # submits gathered at once: the client coalesces them into pipelined batches
LETTERS = 1_000
PAGES = ("/", "/ui/jobs", "/ui/dead-letters")
OPEN_PAGES = 200
UPDATES = 20
UPDATE_SPACING_S = 0.1
CONNECT_LEAD_S = 3.0  # time for the 200 connections to be made before the first update


async def run(options: RunOptions) -> EntryResult:
    """Seed a private Redis through a worker, start a gateway, then time its pages and its job streams."""
    if not HAVE_AIOHTTP:
        raise BenchError("bench dashboard needs aiohttp (pip install -e '.[peers]')")
    jobs = options.jobs or options.pick(full=100_000, quick=10_000)  # --jobs N: a smaller seed, for a smoke run
    requests = options.pick(full=50, quick=10)
    metrics = _declare(Metrics(), jobs)
    async with BenchEnv() as env:
        plugins = [plugin_entry("benchnoop"), plugin_entry("benchprog"), plugin_entry("long_running")]
        await env.start_worker({"plugins": plugins, "concurrency": 200})
        await _seed(env, jobs, metrics)
        gateway = await start_gateway(env)
        try:
            connector = aiohttp.TCPConnector(limit=OPEN_PAGES + 10)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(gateway.url, connector=connector, timeout=timeout) as http:
                for path in PAGES:
                    await _page_times(http, path, requests, metrics)
                await _open_pages(http, env, gateway.proc.pid, metrics)
            metrics.add("gateway peak RSS", rss_mib(gateway.proc.pid, "VmHWM"))
        finally:
            gateway.stop()
    settings = {
        "worker": {"processes": 1, "concurrency": 200, "plugins": ["benchnoop", "benchprog", "long_running"]},
        "gateway": "python -m service gateway (uvicorn, one process, no token: loopback)",
        "seed": {"finished_jobs": jobs, "dead_letters": LETTERS, "how": "client submit + worker, as in production"},
        "page_requests": requests,
        "open_job_pages": {"jobs": OPEN_PAGES, "followers_per_job": 1, "updates": UPDATES},
    }
    return EntryResult("dashboard", settings, metrics.metrics(), [__doc__.split("\n\n")[1].replace("\n", " ")])


def _declare(metrics: Metrics, jobs: int) -> Metrics:
    metrics.declare("seed", "s", f"{jobs:,} no-op jobs and {LETTERS:,} failing ones submitted and run")
    for path in PAGES:
        target = Target("<=", 200.0) if path == "/" else None
        metrics.declare(f"GET {path} p50", "ms", "one at a time, to the last byte", target)
        metrics.declare(f"GET {path} p95", "ms", "one at a time, to the last byte")
    metrics.declare(f"connect {OPEN_PAGES} job streams", "s", "from the first request to the last first event")
    for q in ("p50", "p99"):
        target = Target("<=", 10.0) if q == "p99" else None
        metrics.declare(
            f"job page publish->receive {q}", "ms", f"{OPEN_PAGES} streams open, updates after that", target
        )
    metrics.declare("job page updates received", "%", "of those reported, over every stream", Target(">=", 100.0))
    metrics.declare(f"gateway RSS, {OPEN_PAGES} streams open", "MiB", "VmRSS once all are connected")
    metrics.declare("gateway peak RSS", "MiB", "VmHWM over the entry")
    return metrics


async def _seed(env: BenchEnv, jobs: int, metrics: Metrics) -> None:
    """Finished jobs and dead letters, made by the services themselves (records, events, letters)."""
    started = time.perf_counter()
    for first in range(0, jobs, SUBMIT_CHUNK):
        count = min(SUBMIT_CHUNK, jobs - first)
        await asyncio.gather(*(env.client.submit("benchnoop", "noop") for _ in range(count)))
    failing = await asyncio.gather(*(env.client.submit("long_running", "fail") for _ in range(LETTERS)))
    marker = await env.client.submit("benchnoop", "noop")  # first in, first out: behind every job above
    await marker.result(timeout=600)
    await asyncio.gather(*(h.wait(timeout=60) for h in failing[-10:]))
    deadline = time.monotonic() + 60  # a letter is settled with its job's final record: all there, or nearly
    while len(letters := await env.client.dead.list(LETTERS)) < LETTERS:
        if time.monotonic() > deadline:
            raise BenchError(f"seeding made {len(letters)} dead letters of {LETTERS}")
        await asyncio.sleep(0.2)
    metrics.add("seed", time.perf_counter() - started)


async def _page_times(http: aiohttp.ClientSession, path: str, requests: int, metrics: Metrics) -> None:
    timings = []
    for index in range(requests + 2):
        started = time.perf_counter()
        async with http.get(path) as answer:
            body = await answer.read()
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status != 200:
            raise BenchError(f"GET {path}: {answer.status} {body[:300]!r}")
        if index >= 2:  # the first two warm the registry read, the pools and the templates
            timings.append(elapsed)
    metrics.add(f"GET {path} p50", percentile(timings, 50))
    metrics.add(f"GET {path} p95", percentile(timings, 95))


async def _open_pages(http: aiohttp.ClientSession, env: BenchEnv, gateway_pid: int, metrics: Metrics) -> None:
    """200 job streams open at once on 200 running jobs, as 200 open job pages have them."""
    submits = (
        env.client.submit(
            "benchprog",
            "report_timed",
            {
                "n": UPDATES,
                "interval_s": UPDATE_SPACING_S,
                "lead_s": CONNECT_LEAD_S + UPDATE_SPACING_S * i / OPEN_PAGES,
            },
        )
        for i in range(OPEN_PAGES)
    )
    handles = await asyncio.gather(*submits)
    follow = Followers(OPEN_PAGES, connect_within_s=CONNECT_LEAD_S + 30)
    started = time.time()
    with client_gc_held():
        await asyncio.gather(*(follow.one(http, h.job_id) for h in handles), follow.sample_rss(gateway_pid))
    connected = max(follow.first_events) if len(follow.first_events) == OPEN_PAGES else float("nan")
    steady = [latency for published, latency in follow.samples if published >= connected]
    metrics.add(f"connect {OPEN_PAGES} job streams", connected - started)
    metrics.add("job page publish->receive p50", percentile(steady, 50) if steady else float("nan"))
    metrics.add("job page publish->receive p99", percentile(steady, 99) if steady else float("nan"))
    metrics.add("job page updates received", 100 * follow.received / (OPEN_PAGES * UPDATES))
    metrics.add(f"gateway RSS, {OPEN_PAGES} streams open", follow.rss)
