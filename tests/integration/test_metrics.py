"""Prometheus metrics, scraped over HTTP from a real worker (``metrics_port``) and a real gateway, after a known
set of jobs on the session's redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.client.client import JobClient
from service.models import JobState
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, fixture_plugin
from tests.integration.test_gateway import GatewayProc, gateway_process  # noqa: F401 - the fixture

RELIABILITY = fixture_plugin("reliability")
SCRAPE_TIMEOUT_S = 30.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _free_ports(count: int) -> int:
    """A base port such that it and the ``count - 1`` ports after it are free now."""
    while True:
        base = _free_port()
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


async def _scrape(http: httpx.AsyncClient, url: str) -> Samples:
    reply = await http.get(url)
    assert reply.status_code == 200, reply.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


async def _scrape_until(url: str, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds: a job's end reaches its waiter and the worker's counters in either order."""
    async with httpx.AsyncClient(timeout=10) as http:
        samples = await _scrape(http, url)
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                while not done(samples):
                    await asyncio.sleep(0.05)
                    samples = await _scrape(http, url)
        except TimeoutError:
            pass  # the caller's assertions say what differs
        return samples


def _jobs(samples: Samples, action: str) -> dict[str, float]:
    """``actionq_jobs_total`` of ``reliability.<action>`` by state (the states with a non-zero count)."""
    found = {}
    for (name, labels), value in samples.items():
        tags = dict(labels)
        if name == "actionq_jobs_total" and tags["plugin"] == "reliability" and tags["action"] == action and value:
            found[tags["state"]] = value
    return found


def _count(samples: Samples, name: str, action: str) -> float | None:
    return samples.get((name, (("action", action), ("plugin", "reliability"))))


EXPECTED = {
    "slow_ok": {"started": 3, "succeeded": 3},
    # One ValueError (not retried: failed for good), one ConnectionError then a success.
    "flaky": {"started": 3, "failed": 1, "retried": 1, "succeeded": 1, "dead_lettered": 1},
    # Three attempts, each past its 0.3 s timeout: two retried, the last timed out for good.
    "times_out": {"started": 3, "retried": 2, "timed_out": 1, "dead_lettered": 1},
}

# The wait (submit -> start) is observed once per job, for its first attempt.
FIRST_ATTEMPTS = {"slow_ok": 3, "flaky": 2, "times_out": 1}


async def test_a_worker_serves_its_job_counts(worker_process: WorkerFactory, client: JobClient) -> None:
    port = _free_port()
    worker_process({"plugins": [RELIABILITY], **FAST, "metrics_port": port})
    handles = [await client.submit("reliability", "slow_ok", {"seconds": 0.01}) for _ in range(3)]
    handles.append(await client.submit("reliability", "flaky", {"fail_times": 1, "error": "ValueError"}))
    handles.append(await client.submit("reliability", "flaky", {"fail_times": 1}))
    handles.append(await client.submit("reliability", "times_out", {}))
    states = [(await handle.wait(timeout=60)).state for handle in handles]
    assert states == [JobState.SUCCEEDED] * 3 + [JobState.FAILED, JobState.SUCCEEDED, JobState.TIMED_OUT]

    url = f"http://127.0.0.1:{port}/metrics"
    samples = await _scrape_until(url, lambda s: {a: _jobs(s, a) for a in EXPECTED} == EXPECTED)
    assert {action: _jobs(samples, action) for action in EXPECTED} == EXPECTED
    for action, counts in EXPECTED.items():
        finished = sum(counts.get(state, 0) for state in ("succeeded", "failed", "retried", "timed_out"))
        assert _count(samples, "actionq_job_run_seconds_count", action) == finished
        assert _count(samples, "actionq_job_wait_seconds_count", action) == FIRST_ATTEMPTS[action]
    timeouts = _count(samples, "actionq_job_run_seconds_sum", "times_out")
    assert timeouts is not None
    # Each attempt ran its timeout, give or take the clocks: the deadline is the loop's timer, the
    # measure another clock's reading a few µs around it (0.898 was seen for 3 x 0.3).
    assert timeouts >= 3 * 0.3 * 0.95
    assert samples[("actionq_worker_jobs_active", ())] == 0


async def test_the_gateway_serves_queues_workers_and_its_submits(
    worker_process: WorkerFactory,
    gateway_process: Callable[..., GatewayProc],  # noqa: F811 - the fixture imported above
    client: JobClient,
) -> None:
    worker_process({"plugins": [RELIABILITY], **FAST})
    gw = gateway_process()
    url = f"{gw.url}/metrics"
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:

        async def submit(action: str, params: dict[str, Any], **options: Any) -> str:
            body = {"plugin": "reliability", "action": action, "params": params, "options": options}
            reply = await http.post("/v1/jobs", json=body)
            assert reply.status_code == 202, reply.text
            job_id: str = reply.json()["job_id"]
            return job_id

        running = await submit("cooperative", {"seconds": 60})
        await submit("slow_ok", {"seconds": 0}, defer_s=3600)
        await submit("slow_ok", {"seconds": 0}, defer_s=3600)
        queue = client.keys.queue("reliability")
        handle = client.job(running)
        async with asyncio.timeout(30):
            while (await handle.record()).state is not JobState.RUNNING:
                await asyncio.sleep(0.05)

        async with http.stream("GET", f"/v1/jobs/{running}/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            samples = await _scrape_until(url, lambda s: s.get(("actionq_sse_clients", ())) == 1)
            assert samples[("actionq_sse_clients", ())] == 1
            assert samples[("actionq_queue_depth", (("queue", queue), ("state", "running")))] == 1
            assert samples[("actionq_queue_depth", (("queue", queue), ("state", "deferred")))] == 2
            assert samples[("actionq_queue_depth", (("queue", queue), ("state", "ready")))] == 0
            assert samples[("actionq_queue_oldest_age_seconds", (("queue", queue),))] == 0
            assert samples[("actionq_workers_online", ())] == 1
            assert samples[("actionq_gateway_redis_up", ())] == 1
            submitted = (
                "actionq_jobs_total",
                (("action", "slow_ok"), ("plugin", "reliability"), ("state", "submitted")),
            )
            assert samples[submitted] == 2
            await handle.cancel()
            async for _ in events.aiter_bytes():
                pass  # the stream ends after the terminal state
        samples = await _scrape_until(url, lambda s: s.get(("actionq_sse_clients", ())) == 0)
        assert samples[("actionq_sse_clients", ())] == 0
        assert samples[("actionq_queue_depth", (("queue", queue), ("state", "running")))] == 0


def _start_pool(tmp_path: Path, redis_url: str, namespace: str, base_port: int) -> subprocess.Popen[bytes]:
    """``actionq worker --processes 2`` with ``metrics_port: base_port``, its output in ``tmp_path/pool.log``."""
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"plugins": [RELIABILITY], **FAST, "metrics_port": base_port}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env |= {"ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace, "ACTIONQ_LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "service", "--config", str(config), "worker", "--processes", "2"]
    with (tmp_path / "pool.log").open("wb") as log:
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def _stop_pool(pool: subprocess.Popen[bytes]) -> int:
    if pool.poll() is None:
        pool.send_signal(signal.SIGTERM)
    return pool.wait(60)


async def test_each_member_of_a_pool_serves_its_own_port(
    client: JobClient, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    base = _free_ports(2)
    pool = _start_pool(tmp_path, redis_url, namespace, base)
    try:
        async with asyncio.timeout(60):
            while len(await client.workers()) != 2:
                assert pool.poll() is None, (tmp_path / "pool.log").read_text(errors="replace")[-3000:]
                await asyncio.sleep(0.1)
        handles = [await client.submit("reliability", "slow_ok", {"seconds": 0.01}) for _ in range(6)]
        for handle in handles:
            assert (await handle.wait(timeout=60)).state is JobState.SUCCEEDED

        urls = [f"http://127.0.0.1:{port}/metrics" for port in (base, base + 1)]
        async with httpx.AsyncClient(timeout=10) as http:
            members = [await _scrape(http, url) for url in urls]
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                while sum(_jobs(m, "slow_ok").get("succeeded", 0) for m in members) != 6:
                    await asyncio.sleep(0.05)
                    members = [await _scrape(http, url) for url in urls]
        # Each job counted once, by the member that ran it; each member answers on its own port.
        assert sum(_jobs(m, "slow_ok").get("started", 0) for m in members) == 6
        assert all(m[("actionq_worker_jobs_active", ())] == 0 for m in members)
    finally:
        code = _stop_pool(pool)
    assert code == 0
