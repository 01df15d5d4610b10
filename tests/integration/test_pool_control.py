"""Pools under remote control, and workers that end with the process that started them.

A pool member stopped or drained on request is not restarted, and a pool whose members have all
been stopped that way exits 0; a member that crashes is still restarted. A worker started by a pool
or by ``actionq up`` exits by itself when that parent dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import JobClient
from service.events.models import EventKind
from service.plugins.registry import WorkerInfo
from service.processes.parent import PARENT_ENV
from tests.conftest import FAST, REPO_ROOT, bundled_plugins_config

# A cold interpreter plus plugin imports per member on a busy 2-core machine: a few seconds each.
_READY_S = 30.0
# A member's drain (no job running) takes well under a second; slack for a loaded machine.
_EXIT_S = 30.0


def _env(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env.update(ACTIONQ_REDIS_URL=redis_url, ACTIONQ_NAMESPACE=namespace, ACTIONQ_LOG_FORMAT="json")
    return env | {"PYTHONUNBUFFERED": "1"}


def _start(tmp_path: Path, env: dict[str, str], command: list[str], **config: Any) -> subprocess.Popen[bytes]:
    """``python -m service --config <tmp config> <command>``, its output in ``tmp_path/parent.log``."""
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(bundled_plugins_config(**{**FAST, "heartbeat_s": 0.5, **config})))
    with (tmp_path / "parent.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "--config", str(path), *command],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _members(client: JobClient, count: int, parent: subprocess.Popen[bytes]) -> list[WorkerInfo]:
    """Wait until ``count`` workers are registered; they are sorted by pid."""
    async with asyncio.timeout(_READY_S):
        while len(workers := await client.workers()) != count:
            assert parent.poll() is None, f"the parent exited with {parent.returncode} before its workers were up"
            await asyncio.sleep(0.1)
    return sorted(workers, key=lambda w: w.pid)


def _ended(pid: int) -> bool:
    """True once process ``pid`` has exited (gone, or a zombie its new parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def _until_ended(pids: list[int]) -> None:
    async with asyncio.timeout(_EXIT_S):
        while not all(_ended(pid) for pid in pids):
            await asyncio.sleep(0.05)


def _logged(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    """The parent's JSON log lines that are ``event``."""
    found = []
    for line in (tmp_path / "parent.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


async def _until_logged(tmp_path: Path, event: str, **fields: Any) -> None:
    async with asyncio.timeout(_EXIT_S):
        while not any(fields.items() <= r.items() for r in _logged(tmp_path, event)):
            await asyncio.sleep(0.05)


async def _exit_code(proc: subprocess.Popen[bytes]) -> int:
    """Wait (without blocking the loop) for ``proc`` to exit; its exit code."""
    async with asyncio.timeout(_EXIT_S):
        while (code := proc.poll()) is None:
            await asyncio.sleep(0.05)
    return code


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def env(redis_url: str, namespace: str) -> dict[str, str]:
    """A child's environment: the test's Redis and namespace, JSON logs, no outer ACTIONQ_* variables."""
    return _env(redis_url, namespace)


async def test_stop_host_stops_the_whole_pool(
    client: JobClient, env: dict[str, str], namespace: str, tmp_path: Path
) -> None:
    host = f"pool-{namespace}"
    pool = _start(tmp_path, env, ["worker", "--processes", "2"], hostname=host)
    try:
        members = await _members(client, 2, pool)
        report = await client.control("stop", host=host)
        assert report.acted
        assert sorted(a.worker_id for a in report.acks) == sorted(m.worker_id for m in members)
        assert await _exit_code(pool) == 0  # nothing left to supervise: the pool ends, cleanly
        assert await client.workers() == []  # both members left and no new one was started
        assert _logged(tmp_path, "pool_worker_restarted") == []
        await _until_ended([m.pid for m in members])
    finally:
        _end(pool)


async def test_a_drained_member_is_not_restarted_and_a_killed_one_is(
    client: JobClient, env: dict[str, str], tmp_path: Path
) -> None:
    pool = _start(tmp_path, env, ["worker", "--processes", "2"])
    try:
        drained, other = await _members(client, 2, pool)
        assert (await client.control("drain", worker=drained.worker_id)).acted
        await _until_logged(tmp_path, "pool_worker_stopped", pid=drained.pid)  # the supervisor's decision
        assert [w.pid for w in await client.workers()] == [other.pid]
        results = [await client.submit("PluginB", "calculate_square", {"x": i}) for i in range(5)]
        assert [await h.result(timeout=20) for h in results] == [i * i for i in range(5)]
        assert {(await h.record()).worker for h in results} == {other.worker_id}
        # A crash is still restarted, in its own slot only: the drained slot stays empty.
        os.kill(other.pid, signal.SIGKILL)
        await _until_logged(tmp_path, "pool_worker_restarted")
        async with asyncio.timeout(_READY_S):  # the killed one's entry lapses, its replacement registers
            while len(live := await client.workers()) != 1 or live[0].pid == other.pid:
                await asyncio.sleep(0.1)
        (replacement,) = live
        assert replacement.pid not in (drained.pid, other.pid)
        assert await (await client.submit("PluginB", "calculate_square", {"x": 7})).result(timeout=20) == 49
        assert len(await client.workers()) == 1
        pool.send_signal(signal.SIGTERM)
        assert await _exit_code(pool) == 0
        assert await client.workers() == []
    finally:
        _end(pool)


async def test_every_member_drained_one_by_one_ends_the_pool(
    client: JobClient, env: dict[str, str], tmp_path: Path
) -> None:
    pool = _start(tmp_path, env, ["worker", "--processes", "2"])
    try:
        members = await _members(client, 2, pool)
        for member in members:
            assert (await client.control("drain", worker=member.worker_id)).acted
        assert await _exit_code(pool) == 0
        assert await client.workers() == []
        assert _logged(tmp_path, "pool_worker_restarted") == []
    finally:
        _end(pool)


async def test_the_members_of_a_sigkilled_pool_exit_by_themselves(
    client: JobClient, env: dict[str, str], tmp_path: Path
) -> None:
    pool = _start(tmp_path, env, ["worker", "--processes", "2"])
    members: list[WorkerInfo] = []
    try:
        members = await _members(client, 2, pool)
        pool.kill()
        pool.wait()
        await _until_ended([m.pid for m in members])
        assert await client.workers() == []  # they drained and left the registry
        stopped = [
            getattr(e.event, "reason", "")
            async for e in client.events(kinds=[EventKind.WORKER_STOPPED], since="replay:100", follow=False)
        ]
        assert len(stopped) == 2
        assert all("parent" in reason for reason in stopped), stopped  # they say why they stopped
    finally:
        _end(pool)
        for member in members:
            if not _ended(member.pid):
                os.kill(member.pid, signal.SIGKILL)


async def test_the_worker_of_a_sigkilled_up_exits_by_itself(
    client: JobClient, env: dict[str, str], redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # A configured Redis (the test's): a private one would outlive a SIGKILLed `up` (see
    # service.processes.embedded); the worker is what must not.
    up = _start(tmp_path, env, ["--redis-url", redis_url, "--namespace", namespace, "up", "--no-demo"])
    worker: WorkerInfo | None = None
    try:
        (worker,) = await _members(client, 1, up)
        up.kill()
        up.wait()
        await _until_ended([worker.pid])
        assert await client.workers() == []
    finally:
        _end(up)
        if worker is not None and not _ended(worker.pid):
            os.kill(worker.pid, signal.SIGKILL)


async def test_a_worker_whose_parent_is_gone_before_it_starts_exits_at_once(
    client: JobClient, env: dict[str, str], tmp_path: Path
) -> None:
    # The environment names a parent that is not this worker's parent any more: it has exited.
    orphan = _start(tmp_path, {**env, PARENT_ENV: str(os.getpid() + 1)}, ["worker"])
    try:
        assert await _exit_code(orphan) == 0
        assert _logged(tmp_path, "parent_gone")
        assert _logged(tmp_path, "worker_started") == []  # it stopped before loading anything
    finally:
        _end(orphan)
