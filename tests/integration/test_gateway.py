"""The real gateway (``python -m service gateway`` under uvicorn on a free port) against the session's
redis-server and a real worker, driven with httpx: submit → SSE progress → result, resumption,
streams, idempotency, field errors, scopes, body limit, readiness and cancel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.models import TERMINAL_STATES, JobState
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config
from tests.unit.gateway.sse_text import Event, follow

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

# A cold interpreter importing FastAPI on a busy 2-core machine takes a few seconds.
GATEWAY_READY_TIMEOUT_S = 30.0
SUBMIT_TOKEN = "submit-token-0123456789"
READ_TOKEN = "read-token-0123456789ab"
TOKENS = [
    {"name": "producer", "token": SUBMIT_TOKEN, "scopes": ["submit", "read", "control"]},
    {"name": "reader", "token": READ_TOKEN, "scopes": ["read"]},
]


@dataclass
class GatewayProc:
    """A ``python -m service gateway`` subprocess and its base URL."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_healthy(gw: GatewayProc) -> None:
    deadline = time.monotonic() + GATEWAY_READY_TIMEOUT_S
    while True:
        if gw.proc.poll() is not None:
            pytest.fail(f"the gateway exited with {gw.proc.returncode}:\n{gw.log_tail()}", pytrace=False)
        try:
            if httpx.get(f"{gw.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the gateway did not answer within {GATEWAY_READY_TIMEOUT_S:g}s:\n{gw.log_tail()}")
        time.sleep(0.05)


@pytest.fixture
def gateway_process(redis_url: str, namespace: str, tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    """Factory: ``start(env=None)`` runs the gateway in this test's namespace and waits for /healthz."""
    started: list[GatewayProc] = []

    def start(env: dict[str, str] | None = None) -> GatewayProc:
        port = _free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
        child_env |= {
            "ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace, "ACTIONQ_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1", **(env or {}),
        }  # fmt: skip
        log_path = tmp_path / f"gateway-{len(started) + 1}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service", "gateway", "--port", str(port)],
                env=child_env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        gw = GatewayProc(proc, f"http://127.0.0.1:{port}", log_path)
        started.append(gw)
        _wait_healthy(gw)
        return gw

    yield start
    problems = []
    for gw in started:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
            try:
                code = gw.proc.wait(20)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                problems.append(f"the gateway ignored SIGTERM:\n{gw.log_tail()}")
                continue
            if code != 0:
                problems.append(f"the gateway exited with {code} on SIGTERM:\n{gw.log_tail()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@asynccontextmanager
async def _http(gw: GatewayProc, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=30) as http:
        yield http


async def _submit(http: httpx.AsyncClient, plugin: str, action: str, params: Any, **extra: Any) -> str:
    reply = await http.post("/v1/jobs", json={"plugin": plugin, "action": action, "params": params}, **extra)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


async def _events(
    http: httpx.AsyncClient, path: str, *, last: str | None = None, stop: int | None = None
) -> list[Event]:
    """The events (comments left out) of ``path`` to its end, or the first ``stop`` of them."""
    headers = {"Last-Event-ID": last} if last is not None else {}
    found: list[Event] = []
    async with http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for event in follow(response):
            if event.comment is not None:
                continue
            found.append(event)
            if stop is not None and len(found) >= stop:
                break
    return found


def _worker(worker_process: WorkerFactory) -> None:
    worker_process(bundled_plugins_config(**FAST))


async def test_submit_then_follow_progress_over_sse_then_the_result(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    _worker(worker_process)
    gw = gateway_process()
    async with _http(gw) as http:
        job_id = await _submit(http, "long_running", "count_slowly", {"steps": 4, "delay_s": 0.05})
        events = await _events(http, f"/v1/jobs/{job_id}/events")
        seqs = [int(e.id or -1) for e in events]
        assert seqs == sorted(set(seqs)), f"ids not strictly increasing: {seqs}"
        assert events[0].event == "state"
        assert events[-1].event == "state"
        assert events[-1].json()["state"] == JobState.SUCCEEDED
        steps = [e.json()["progress"]["current_step"] for e in events if e.json()["progress"]]
        assert steps == sorted(steps)
        assert steps[-1] == 4
        result = await http.get(f"/v1/jobs/{job_id}/result", params={"wait": 10})
        assert result.status_code == 200
        assert result.json()["state"] == "succeeded"
        assert result.json()["result"]["steps"] == 4
        record = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert record["seq"] == seqs[-1]
        assert record["worker"]
        assert record["attempts"][0]["state"] == "succeeded"


async def test_a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    _worker(worker_process)
    gw = gateway_process()
    async with _http(gw) as http:
        job_id = await _submit(http, "long_running", "count_slowly", {"steps": 6, "delay_s": 0.15})
        path = f"/v1/jobs/{job_id}/events"
        first: list[Event] = []
        while not any(e.json()["progress"] for e in first):  # until mid-job: the first step reported
            first = await _events(http, path, stop=len(first) + 1)
        last = first[-1].id
        assert last is not None
        assert first[-1].json()["state"] not in TERMINAL_STATES
        rest = await _events(http, path, last=last)
        seqs = [int(e.id or -1) for e in first + rest]
        assert seqs == sorted(set(seqs)), f"a duplicate or out of order across the reconnect: {seqs}"
        assert int(rest[0].id or -1) > int(last)
        final = rest[-1].json()
        assert final["state"] == JobState.SUCCEEDED
        assert final["progress"]["current_step"] == 6
        record = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert seqs[-1] == record["seq"]  # the last event is the record's final state
        assert (await http.get(path, headers={"Last-Event-ID": str(seqs[-1])})).status_code == 204


async def test_stream_items_over_sse_resume_and_the_seeds_execute(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    _worker(worker_process)
    gw = gateway_process()
    async with _http(gw) as http:
        job_id = await _submit(http, "InteropTarget", "it_async_gen", {"n": 5, "prefix": "s", "delay_ms": 20})
        events = await _events(http, f"/v1/jobs/{job_id}/stream")
        assert [(e.event, e.id) for e in events] == [("item", f"0-{i}") for i in range(1, 6)] + [("end", "0-6")]
        assert [e.json() for e in events[:5]] == ["s0", "s1", "s2", "s3", "s4"]
        assert events[-1].json() == {"state": "succeeded", "count": 5, "error": None}
        resumed = await _events(http, f"/v1/jobs/{job_id}/stream", last="0-3")
        assert [e.id for e in resumed] == ["0-4", "0-5", "0-6"]

        executed = await http.post("/execute", json={"plugin": "PluginB", "method": "calculate_square", "args": 6})
        assert executed.status_code == 200
        assert executed.json()["result"] == 36
        assert executed.json()["error"] is None
        failed = await http.post(
            "/execute", json={"plugin": "long_running", "method": "fail", "args": {"message": "no"}}
        )
        assert failed.json()["error"]["type"] == "RuntimeError"
        assert failed.json()["result"] is None
        found: list[Event] = []
        body = {"plugin": "InteropTarget", "method": "it_sync_gen", "args": {"n": 3}}
        async with http.stream("POST", "/execute_stream", json=body) as response:
            assert response.status_code == 200
            found = [e async for e in follow(response) if e.comment is None]
        assert [e.event for e in found] == ["job", "item", "item", "item", "end"]
        assert [e.json() for e in found[1:4]] == ["g0", "g1", "g2"]


async def test_idempotency_and_field_errors_over_http(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    _worker(worker_process)
    gw = gateway_process()
    async with _http(gw) as http:
        body = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 5}}
        first = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "pay-1"})
        again = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "pay-1"})
        assert first.status_code == 202
        assert again.status_code == 200
        assert first.json()["job_id"] == again.json()["job_id"] == "pay-1"
        assert (await http.get("/v1/jobs/pay-1/result", params={"wait": 10})).json()["result"] == 25
        bad = await http.post("/v1/jobs", json={**body, "params": {"x": "five", "y": 1}})
        assert bad.status_code == 422
        assert {f["field"] for f in bad.json()["error"]["fields"]} == {"x", "y"}
        assert bad.json()["error"]["type"] == "InvalidParamsError"
        plugins = (await http.get("/v1/plugins")).json()
        assert {"PluginB", "long_running", "InteropTarget"} <= {p["name"] for p in plugins}
    assert "bound to loopback only because no token is configured" in gw.log_path.read_text()


async def test_an_idle_keep_alive_connection_is_closed_after_the_setting(
    gateway_process: Callable[..., GatewayProc],
) -> None:
    gw = gateway_process({"ACTIONQ_GATEWAY__HTTP_KEEP_ALIVE_S": "1"})
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in head.lower()  # kept alive after the answer
        headers = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:] if line)
        length = int(headers[b"content-length"])
        await reader.readexactly(length)
        async with asyncio.timeout(30):
            assert await reader.read() == b""  # the server closed it: EOF
    finally:
        writer.close()


async def test_scopes_body_limit_and_readiness(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    gw = gateway_process({"ACTIONQ_GATEWAY__TOKENS": json.dumps(TOKENS), "ACTIONQ_GATEWAY__MAX_BODY_BYTES": "2048"})
    async with _http(gw) as anonymous, _http(gw, READ_TOKEN) as reader, _http(gw, SUBMIT_TOKEN) as producer:
        not_ready = await anonymous.get("/readyz")
        assert not_ready.status_code == 503
        assert "no live worker" in not_ready.json()["error"]["message"]
        _worker(worker_process)
        ready = await anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["workers"] == 1

        body = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 3}}
        refused = await anonymous.post("/v1/jobs", json=body)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        forbidden = await reader.post("/v1/jobs", json=body)
        assert forbidden.status_code == 403
        assert "'submit' scope" in forbidden.json()["error"]["message"]
        job_id = await _submit(producer, "PluginB", "calculate_square", {"x": 3})
        assert (await reader.get(f"/v1/jobs/{job_id}/result", params={"wait": 10})).json()["result"] == 9

        big = {**body, "params": {"x": 3, "pad": "z" * 4000}}
        too_big = await producer.post("/v1/jobs", json=big)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["type"] == "BodyTooLarge"
        assert (await anonymous.get("/healthz")).status_code == 200  # still up
    log = gw.log_path.read_text()
    assert SUBMIT_TOKEN not in log
    assert READ_TOKEN not in log
    assert "loopback only" not in log


async def test_cancel_a_running_job_over_http(
    gateway_process: Callable[..., GatewayProc], worker_process: WorkerFactory
) -> None:
    _worker(worker_process)
    gw = gateway_process()
    async with _http(gw) as http:
        job_id = await _submit(http, "long_running", "count_slowly", {"steps": 200, "delay_s": 0.1})
        seen: list[Event] = []
        while not seen or seen[-1].json()["state"] != JobState.RUNNING:  # wait for the event that says it runs
            seen = await _events(http, f"/v1/jobs/{job_id}/events", stop=len(seen) + 1)
        cancelled = await http.post(f"/v1/jobs/{job_id}/cancel", params={"wait": 20}, json={"reason": "enough"})
        assert cancelled.status_code == 200
        assert cancelled.json()["outcome"] == "cancelled_running"
        record = (await http.get(f"/v1/jobs/{job_id}")).json()
        assert record["state"] == "cancelled"
        assert record["attempts"][-1]["state"] == "cancelled"  # stopped mid-run (200 steps take 20 s)
        tail = await _events(http, f"/v1/jobs/{job_id}/events", last=seen[-1].id)
        assert tail[-1].json()["state"] == JobState.CANCELLED
