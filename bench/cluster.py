"""``cluster``: drain ``incr`` jobs through actionq on one Redis and on a 3-master Redis Cluster.

Three set-ups, measured in one run, their order reversed every other repetition:

* **A, one Redis**: a private redis-server (:class:`~bench.harness.BenchEnv`'s), one worker process;
* **B, cluster, 1 worker**: a 3-master cluster (:class:`tests.clusterkit.ClusterSet`, started once
  for the run; each repetition uses a fresh namespace on it), one worker process;
* **C, cluster, 3 workers**: the same cluster, three worker processes.

Every worker is ``python -m service worker`` with the ``benchnoop`` plugin, concurrency 100 and the
service defaults (``cluster_partitions`` 6 on the cluster). The producer is the one ``bench
compare`` runs (``python -m bench.producer actionq N incr``: ``JobClient.submit`` calls gathered,
coalesced into batch script calls). Each job awaits one ``INCR`` on its worker's own client; that
counter lives on a plain redis-server of its own, the same for A, B and C, so that what the broker
counts is actionq's traffic alone. That takes no change to the shared plumbing: the worker's
``BENCH_REDIS_URL`` (read only by the job body, :mod:`bench.jobs`) names the counter server, the
producer's names the broker (:func:`bench.peers.actionqpeer.open_producer` connects to it).

A drain is timed as :mod:`bench.drain` times one: from the producer's first submit to the counter
reaching its final value (polled every ``PROBE_S`` on the counter server, so the probe costs the
broker nothing). :func:`bench.drain.drain` itself cannot be used: it reads commands off one server
(the contender's probe, here the counter) and the CPU of one worker process; this entry needs
``INFO commandstats`` deltas of every broker node and the CPU of every worker, over the same window
(producer ready -> counter done + ``SETTLE_S``). It reuses drain's constants and checks.

Figures per set-up (medians over repetitions): drain jobs/s; broker commands per job in total and
per node (commands run inside scripts count, as ``INFO commandstats`` counts them); the busiest
node's share; the busiest node's redis-server CPU per job; worker CPU per job (every worker summed).
With one worker, after each drain, ``LATENCY_JOBS`` jobs one at a time to the idle worker: submit ->
result p50 / p99 (``JobHandle.result`` waits on the job's channel, sharded on a cluster), and how
many the submit handed straight over (the worker's hand-off channel, sharded on a cluster too).

**Where the commands go.** After the timed repetitions, one more drain on the cluster (one worker,
not timed) runs with ``MONITOR`` on every master and sorts each command by the key it names: the
job partitions (the six ``{<ns>.p}`` tags, spread over the masters), the events stream
(``<ns>:events``, one key, so one node: ``CLUSTER KEYSLOT``, here :func:`redis.crc.key_slot`), the
worker keys (``{<ns>.workers}`` and the ``<ns>:workers`` ZSET), the registry (``<ns>:registry:*``,
single keys), ``PUBLISH`` (a classic channel, no key: the node that runs it forwards it to every
other over the cluster bus, which costs each of them too, but counts only there), ``SPUBLISH`` (a
sharded channel: it stays on the node of its partition, so it is spread like the partitions' keys),
and commands with no key.

**The arithmetic** (printed in the notes with this run's figures). Take ``CAP`` ~100,000 simple
commands/s per Redis core (one node is one core), ``c_part`` the commands per job on partitioned
keys (spread evenly over the masters) and ``c_hot`` the commands per job on the busiest node's
single keys (the events stream, and whatever single keys share its node). A target rate ``R`` then
needs ``S`` masters with ``R * c_part / S + R * c_hot <= CAP``, so ``S = ceil(R * c_part / (CAP - R
* c_hot))``, and no number of shards gets past ``R_max = CAP / c_hot``: the events stream's node is
the next bottleneck, then the worker keys' node. Two caveats: a command inside a script is cheaper
than a client's round trip, so ``CAP`` is conservative for script-heavy traffic; and the single-key
commands are partly per second, not per job (heartbeats), and the events stream's ``XADD`` carries
a batch (up to 500 events), so ``c_hot`` measured at this bench's rate overstates it at a higher one.

Why the bench imports :mod:`tests.clusterkit`: it is the project's one cluster builder (plain
``CLUSTER`` commands, no ``redis-cli``); ``python -m bench`` runs from the repository root, where
``tests`` is a package, so this entry needs a checkout, as every bench entry does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot

from bench.drain import PROBE_S, READY_TIMEOUT_S, SETTLE_S, expected_count, remaining
from bench.harness import REPO_ROOT, BenchEnv, Worker, plugin_entry
from bench.jobs import Workload
from bench.options import RunOptions
from bench.peers.actionqpeer import PLUGIN, WORKER
from bench.peers.base import JOB_TIMEOUT_S, PeerError
from bench.procstats import cpu_seconds
from bench.redisstats import command_calls, commands_delta, top_commands
from bench.report import EntryResult
from bench.stats import Metrics, median, percentile
from bench.table import fmt_rate, markdown_table
from service.keys import Keys
from service.processes.embedded import EmbeddedRedis
from tests.clusterkit import ClusterSet

__all__ = ["CAPACITY", "ClusterEnv", "Setup", "shards_needed", "run"]

MASTERS = 3
PARTITIONS = 6  # the service's default cluster_partitions
CAPACITY = 100_000
"""Simple commands per second one Redis core serves (the usual order of magnitude, pipelining aside)."""
TARGET_RATES = (10_000, 25_000, 50_000, 100_000)
DRAIN_TIMEOUT_S = 300.0
ATTRIBUTION_MAX_JOBS = 2_000
LATENCY_JOBS = 200
LATENCY_GAP_S = 0.02
_MONITOR_END = "bench-cluster-monitor-end"
_ONE = "one:redis"  # the node name of set-up A's server (a new port each repetition)
_SCRIPT_CALLS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
_NO_KEY = frozenset(
    {"ping", "echo", "cluster", "client", "script", "hello", "select", "info", "readonly", "command", "config", "time"}
)


@dataclass(frozen=True)
class Setup:
    """One of the compared set-ups: its label, whether it runs on the cluster, and its worker processes."""

    key: str
    label: str
    cluster: bool
    workers: int


SETUPS = (
    Setup("A", "one Redis, 1 worker", cluster=False, workers=1),
    Setup("B", f"cluster ({MASTERS} masters), 1 worker", cluster=True, workers=1),
    Setup("C", f"cluster ({MASTERS} masters), {MASTERS} workers", cluster=True, workers=MASTERS),
)


class ClusterEnv(BenchEnv):
    """A :class:`BenchEnv` whose broker is a running cluster (the run's, not started or stopped here).

    Its workers and client get the cluster's ``redis+cluster://`` URL; the private server
    :class:`BenchEnv` starts anyway is left idle (it costs nothing measurable, and is stopped on exit).
    """

    def __init__(self, cluster: ClusterSet) -> None:
        super().__init__()
        self.cluster = cluster

    @property
    def url(self) -> str:
        """The cluster's seed nodes."""
        return self.cluster.url


@dataclass
class Sample:
    """One drain of one set-up."""

    jobs: int
    seconds: float
    per_node: dict[str, Counter[str]]
    """Broker node (``host:port``) -> commands of the window."""
    redis_cpu_s: dict[str, float]
    worker_cpu_s: float
    latency_ms: list[float] = field(default_factory=list)
    """Submit -> result of each job of the latency phase (one-worker set-ups)."""
    handed: int = 0
    """Of those, the jobs a submit handed straight to the idle worker (started when enqueued)."""

    @property
    def rate(self) -> float:
        """Drain jobs/s."""
        return self.jobs / self.seconds

    def node_per_job(self) -> dict[str, float]:
        """Commands per job on each node."""
        return {node: sum(calls.values()) / self.jobs for node, calls in self.per_node.items()}

    @property
    def per_job(self) -> float:
        """Broker commands per job, every node."""
        return sum(self.node_per_job().values())

    @property
    def busiest_share(self) -> float:
        """The busiest node's part of the commands."""
        per_node = self.node_per_job()
        return max(per_node.values()) / sum(per_node.values()) if sum(per_node.values()) else math.nan

    @property
    def redis_us_per_command(self) -> float:
        """redis-server CPU per command, every node: what one command costs here (checks ``CAPACITY``)."""
        commands = sum(sum(calls.values()) for calls in self.per_node.values())
        return 1e6 * sum(self.redis_cpu_s.values()) / commands if commands else math.nan

    @property
    def busiest_redis_cpu_us(self) -> float:
        """The busiest node's redis-server CPU per job, microseconds."""
        return 1e6 * max(self.redis_cpu_s.values()) / self.jobs


@dataclass
class Attribution:
    """Commands of one drain sorted by the key they name: group -> node -> count (top level, inside scripts)."""

    jobs: int
    top: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    scripted: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    others: Counter[str] = field(default_factory=Counter)
    """Key prefixes of the "other keys" group (what they are, for the JSON)."""
    events_key: str = ""
    events_slot: int = 0
    events_owner: str = ""
    """``host:port`` of the master owning the events stream's slot (``CLUSTER KEYSLOT``, computed)."""
    workers_slot: int = 0
    workers_owner: str = ""

    def per_job(self, group: str) -> float:
        """Commands per job of ``group``, every node."""
        return (sum(self.top[group].values()) + sum(self.scripted[group].values())) / self.jobs

    def per_node_job(self, group: str) -> dict[str, float]:
        """Commands per job of ``group`` on each node."""
        nodes = set(self.top[group]) | set(self.scripted[group])
        return {node: (self.top[group][node] + self.scripted[group][node]) / self.jobs for node in sorted(nodes)}

    @property
    def groups(self) -> list[str]:
        """Every group seen, the biggest first."""
        return sorted(set(self.top) | set(self.scripted), key=lambda g: -self.per_job(g))


# Groups of :func:`classify`.
PARTITIONED = "job partitions"
EVENTS = "events stream"
WORKER_KEYS = "worker keys"
REGISTRY = "registry"
PUBLISH = "PUBLISH (classic channels)"
SPUBLISH = "SPUBLISH (sharded channels)"
NO_KEY = "no key"
OTHER = "other keys"
SINGLE_KEY_GROUPS = (EVENTS, WORKER_KEYS, REGISTRY, OTHER)


def command_key(tokens: Sequence[str]) -> str | None:
    """The (first) key a command names, ``None`` for none; ``PUBLISH``'s channel is no key."""
    if not tokens:
        return None
    name = tokens[0].lower()
    if name in _SCRIPT_CALLS:
        numkeys = int(tokens[2]) if len(tokens) > 2 and tokens[2].isdigit() else 0
        return tokens[3] if numkeys and len(tokens) > 3 else None
    if name in ("xread", "xreadgroup"):
        lowered = [token.lower() for token in tokens]
        return tokens[lowered.index("streams") + 1] if "streams" in lowered[:-1] else None
    if name in _NO_KEY or name in ("publish", "spublish") or len(tokens) < 2:
        return None
    return tokens[1]


def classify(tokens: Sequence[str], keys: Keys) -> str:
    """The group of one command (``keys``: the namespace's cluster layout)."""
    if tokens and tokens[0].lower() == "spublish":  # on the node of its channel's partition
        return SPUBLISH
    if tokens and tokens[0].lower() == "publish":
        return PUBLISH
    key = command_key(tokens)
    if key is None:
        return NO_KEY
    if any(tag in key for tag in keys.tags):
        return PARTITIONED
    if key == keys.events():
        return EVENTS
    if key == keys.workers() or key.startswith(keys.worker("")):
        return WORKER_KEYS
    if key.startswith(f"{keys.namespace}:registry:"):
        return REGISTRY
    return OTHER


def shards_needed(rate: float, c_part: float, c_hot: float, capacity: float = CAPACITY) -> int | None:
    """Masters for ``rate`` jobs/s: ``rate * c_part / S + rate * c_hot <= capacity``; None if no ``S`` will do."""
    room = capacity - rate * c_hot
    if room <= 0:
        return None
    return max(1, math.ceil(rate * c_part / room))


async def run(options: RunOptions) -> EntryResult:
    """Start the counter server and the cluster, run every set-up ``reps`` times, then the attribution drain."""
    jobs = options.jobs if options.jobs is not None else options.pick(full=10_000, quick=2_000)
    reps = options.run_count(full=3, quick=1)
    samples: dict[str, list[Sample]] = {setup.key: [] for setup in SETUPS}
    counter_server = EmbeddedRedis()
    cluster = ClusterSet(masters=MASTERS)
    await asyncio.to_thread(counter_server.start)
    try:
        await asyncio.to_thread(cluster.start)
        counter = Redis.from_url(counter_server.url)
        try:
            for rep in range(reps):
                for setup in SETUPS if rep % 2 == 0 else SETUPS[::-1]:
                    _say(f"repetition {rep + 1}/{reps}: {setup.key}, {setup.label}")
                    sample = await _one(setup, cluster, counter, counter_server.url, jobs)
                    samples[setup.key].append(sample)
                    _say(f"  {sample.rate:,.0f} jobs/s, {sample.per_job:.1f} cmds/job")
            _say("attribution drain (MONITOR on every master, not timed)")
            attribution = await _attribute(cluster, counter, counter_server.url, min(jobs, ATTRIBUTION_MAX_JOBS))
        finally:
            await counter.aclose()
    finally:
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(counter_server.stop)
    return _result(samples, attribution, jobs, reps)


async def _one(setup: Setup, cluster: ClusterSet, counter: Redis, counter_url: str, jobs: int) -> Sample:
    """A fresh environment (namespace) and workers for one set-up; one drain."""
    env = ClusterEnv(cluster) if setup.cluster else BenchEnv()
    async with env:
        workers = await _start_workers(env, setup.workers, counter_url)
        nodes = _broker_nodes(env, cluster if setup.cluster else None)
        try:
            sample = await _drain(env, workers, nodes, counter, jobs)
        finally:
            await _close_all(nodes.values())
        if setup.workers == 1:
            sample.latency_ms, sample.handed = await _latency(env)
        return sample


async def _latency(env: BenchEnv) -> tuple[list[float], int]:
    """``LATENCY_JOBS`` jobs one at a time, ``LATENCY_GAP_S`` apart, to the idle worker: each one's
    submit -> result (``JobHandle.result``, which waits on the job's channel), and how many the
    submit handed over (the record's start is its enqueue: the submit script started it)."""
    took, handed = [], 0
    for _ in range(LATENCY_JOBS):
        started = time.perf_counter()
        handle = await env.client.submit(PLUGIN, "stamp")
        await handle.result(timeout=JOB_TIMEOUT_S)
        took.append(1000 * (time.perf_counter() - started))
        record = await handle.record()
        handed += record.started_at_ms == record.enqueued_at_ms
        await asyncio.sleep(LATENCY_GAP_S)
    return took, handed


async def _start_workers(env: BenchEnv, count: int, counter_url: str) -> list[Worker]:
    """``count`` workers whose jobs count on the counter server; warm (each has run a job)."""
    workload = _workload(env, counter_url)
    config = {"plugins": [plugin_entry(PLUGIN)], **WORKER}
    workers = [await env.start_worker(config, workload.env()) for _ in range(count)]
    # Warm-up: the client's manifest cache and every worker's first take (jobs land where they will).
    handles = [await env.client.submit(PLUGIN, "stamp") for _ in range(4 * count)]
    await asyncio.gather(*(handle.result(timeout=JOB_TIMEOUT_S) for handle in handles))
    return workers


def _workload(env: BenchEnv, url: str) -> Workload:
    """The ``BENCH_*`` variables: ``url`` is the counter server (workers) or the broker (producer)."""
    return Workload(
        url=url, queue=f"{env.namespace}-cluster", counter=f"{env.namespace}:count", namespace=env.namespace
    )


def _broker_nodes(env: BenchEnv, cluster: ClusterSet | None) -> dict[str, Redis]:
    """A plain client per broker node (``host:port``): the one server, or each master."""
    if cluster is None:
        return {_ONE: Redis.from_url(env.server.url)}  # one name for every repetition's server
    return {f"{node.host}:{node.port}": Redis.from_url(node.url) for node in cluster.masters}


def _server_pids(env: BenchEnv, cluster: ClusterSet | None) -> dict[str, int]:
    if cluster is None:
        return {_ONE: env.server.pid} if env.server.pid is not None else {}
    return {f"{s.host}:{s.port}": s.pid for s in cluster.masters if s.pid is not None}


async def _close_all(clients: Iterable[Redis]) -> None:
    for client in clients:
        await client.aclose()


async def _drain(
    env: BenchEnv,
    workers: Sequence[Worker],
    nodes: dict[str, Redis],
    counter: Redis,
    jobs: int,
) -> Sample:
    """One drain: producer ready -> snapshots -> go -> counter done -> settle -> snapshots (module docstring)."""
    cluster = env.cluster if isinstance(env, ClusterEnv) else None
    pids = _server_pids(env, cluster)
    key = _workload(env, "").counter
    with tempfile.TemporaryDirectory(prefix="actionq-bench-cluster-") as tmp:
        errors = Path(tmp) / "stderr"
        with errors.open("wb") as stderr:
            producer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.producer", "actionq", str(jobs), "incr",
                cwd=REPO_ROOT,
                env=_producer_env(env),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )  # fmt: skip
        try:
            assert producer.stdin is not None
            assert producer.stdout is not None
            line = await asyncio.wait_for(producer.stdout.readline(), READY_TIMEOUT_S)
            if line.strip() != b"ready":
                await producer.wait()
                raise PeerError(f"cluster bench: producer did not start: {_tail(errors)}")
            target = int(await counter.get(key) or 0) + expected_count(jobs, "incr")
            before = {node: await command_calls(client) for node, client in nodes.items()}
            cpu_before = _cpu(w.pid for w in workers), {node: cpu_seconds(pid) for node, pid in pids.items()}
            producer.stdin.write(b"go\n")
            await producer.stdin.drain()
            await _wait_counter(counter, key, target, producer, errors)
            t_done = time.time()
            out = await asyncio.wait_for(producer.stdout.readline(), READY_TIMEOUT_S)
            await producer.wait()
            if producer.returncode != 0 or not out:
                raise PeerError(f"cluster bench: producer exited with {producer.returncode}: {_tail(errors)}")
            await asyncio.sleep(SETTLE_S)
            after = {node: await command_calls(client) for node, client in nodes.items()}
            worker_cpu = _cpu(w.pid for w in workers) - cpu_before[0]
            redis_cpu = {node: cpu_seconds(pid) - cpu_before[1][node] for node, pid in pids.items()}
        finally:
            if producer.returncode is None:
                producer.kill()
                await producer.wait()
    for worker in workers:
        if not worker.running:
            raise PeerError(f"worker {worker.pid} died during the drain:\n{worker.log_tail()}")
    per_node = {node: commands_delta(before[node], after[node], Counter()) for node in nodes}
    seconds = t_done - json.loads(out)["t_first"]
    return Sample(jobs, seconds, per_node, redis_cpu, worker_cpu)


def _producer_env(env: BenchEnv) -> dict[str, str]:
    """Ours without ``ACTIONQ_*``, plus the workload naming the broker (the producer's client connects there)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    return base | _workload(env, env.url).env() | {"PYTHONUNBUFFERED": "1"}


def _cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def _wait_counter(
    counter: Redis, key: str, target: int, producer: asyncio.subprocess.Process, errors: Path
) -> None:
    """Poll the counter server until ``key`` reaches ``target`` (a value past it fails: a job ran twice)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        value = int(await counter.get(key) or 0)
        if not remaining(value, target, label="cluster bench"):
            return
        if producer.returncode not in (None, 0):
            raise PeerError(f"cluster bench: producer failed: {_tail(errors)}")
        if time.monotonic() > deadline:
            raise PeerError(f"cluster bench: {target - value} jobs unfinished after {DRAIN_TIMEOUT_S:g} s")
        await asyncio.sleep(PROBE_S)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


async def _attribute(cluster: ClusterSet, counter: Redis, counter_url: str, jobs: int) -> Attribution:
    """One drain on the cluster (one worker) with ``MONITOR`` on every master: each command sorted by its key."""
    env = ClusterEnv(cluster)
    async with env:
        workers = await _start_workers(env, 1, counter_url)
        keys = Keys(env.namespace, PARTITIONS)
        result = Attribution(jobs, events_key=keys.events())
        result.events_slot = key_slot(keys.events().encode())
        result.workers_slot = key_slot(keys.worker("x").encode())
        host = cluster.masters[0].host
        result.events_owner = f"{host}:{cluster.slot_owner(result.events_slot)}"
        result.workers_owner = f"{host}:{cluster.slot_owner(result.workers_slot)}"
        marker = f"{_MONITOR_END}-{uuid.uuid4().hex}"
        nodes = _broker_nodes(env, cluster)
        try:
            async with contextlib.AsyncExitStack() as stack:
                monitors = {node: await stack.enter_async_context(client.monitor()) for node, client in nodes.items()}
                tasks = [
                    asyncio.create_task(_listen(node, monitor, keys, result, marker))
                    for node, monitor in monitors.items()
                ]
                await _drain(env, workers, nodes, counter, jobs)
                for client in nodes.values():
                    await client.echo(marker)
                await asyncio.wait_for(asyncio.gather(*tasks), DRAIN_TIMEOUT_S)
        finally:
            await _close_all(nodes.values())
    return result


async def _listen(node: str, monitor: Any, keys: Keys, into: Attribution, marker: str) -> None:
    """Sort every command ``node`` reports until the end marker (the backlog included)."""
    while True:
        info = await monitor.next_command()
        tokens = str(info["command"]).split(" ")
        if len(tokens) > 1 and tokens[0].lower() == "echo" and tokens[1] == marker:
            return
        if tokens[0].lower() == "info":  # the bench's own snapshots
            continue
        group = classify(tokens, keys)
        (into.scripted if info["client_type"] == "lua" else into.top)[group][node] += 1
        if group == OTHER:
            into.others[_prefix(command_key(tokens) or "")] += 1


def _prefix(key: str) -> str:
    """A key's kind: its name up to the last ``:`` (ids and tags cut)."""
    return key.rsplit(":", 1)[0] + ":..." if ":" in key else key


def _say(line: str) -> None:
    """Progress on stderr: a full run takes a few minutes."""
    print(line, file=sys.stderr, flush=True)


# -- the report ---------------------------------------------------------------------------------
def _result(samples: dict[str, list[Sample]], attribution: Attribution, jobs: int, reps: int) -> EntryResult:
    metrics = Metrics()
    for setup in SETUPS:
        runs = samples[setup.key]
        name = f"{setup.key} {setup.label}"
        metrics.declare(
            f"{name}: drain", "jobs/s", "producer's first submit -> counter at N (counter on its own server)"
        )
        metrics.declare(f"{name}: Redis cmds/job", "cmds", "every broker node, INFO commandstats (script calls inside)")
        metrics.declare(f"{name}: busiest node share", "%", "the busiest node's part of the commands")
        metrics.declare(f"{name}: busiest node Redis CPU", "us/job", "the redis-server with the most user+system CPU")
        metrics.declare(f"{name}: worker CPU", "ms/job", f"{setup.workers} worker process(es), summed")
        if setup.workers == 1:
            metrics.declare(
                f"{name}: result latency p50",
                "ms",
                f"{LATENCY_JOBS} jobs one at a time to the idle worker: submit -> JobHandle.result",
            )
            metrics.declare(f"{name}: result latency p99", "ms", "the same jobs")
        for sample in runs:
            if sample.latency_ms:
                metrics.add(f"{name}: result latency p50", percentile(sample.latency_ms, 50))
                metrics.add(f"{name}: result latency p99", percentile(sample.latency_ms, 99))
            metrics.add(f"{name}: drain", sample.rate)
            metrics.add(f"{name}: Redis cmds/job", sample.per_job)
            metrics.add(f"{name}: busiest node share", 100 * sample.busiest_share)
            metrics.add(f"{name}: busiest node Redis CPU", sample.busiest_redis_cpu_us)
            metrics.add(f"{name}: worker CPU", 1000 * sample.worker_cpu_s / sample.jobs)
    settings = {
        "jobs": jobs,
        "reps": reps,
        "masters": MASTERS,
        "cluster_partitions": PARTITIONS,
        "worker": {**WORKER, "other": "service defaults"},
        "producer": "python -m bench.producer actionq N incr (JobClient.submit x N gathered, coalesced)",
        "counter": "a plain redis-server of its own, the same for every set-up",
        "order": "A, B, C; reversed every other repetition",
    }
    details: dict[str, Any] = {
        "per_node_commands_per_job": {
            setup.key: [
                {
                    node: {"total": round(sum(c.values()) / s.jobs, 3), "top": top_commands(c, s.jobs)}
                    for node, c in s.per_node.items()
                }
                for s in samples[setup.key]
            ]
            for setup in SETUPS
        },
        "attribution": {
            "jobs": attribution.jobs,
            "per_job": {group: round(attribution.per_job(group), 3) for group in attribution.groups},
            "per_node_per_job": {group: attribution.per_node_job(group) for group in attribution.groups},
            "other_key_kinds": dict(attribution.others.most_common(10)),
        },
    }
    tables = [_setups_table(samples), _attribution_table(attribution)]
    return EntryResult("cluster", settings, metrics.metrics(), _arithmetic(samples, attribution), details, tables)


def _setups_table(samples: dict[str, list[Sample]]) -> str:
    headers = [
        "set-up",
        "drain jobs/s",
        "Redis cmds/job",
        "cmds/job per node",
        "busiest node",
        "busiest node Redis CPU us/job",
        "worker CPU ms/job",
        "result p50 / p99 ms (handed over)",
    ]
    rows = []
    for setup in SETUPS:
        runs = samples[setup.key]
        timed = [s for s in runs if s.latency_ms]
        latency = (
            f"{median([percentile(s.latency_ms, 50) for s in timed]):.2f} / "
            f"{median([percentile(s.latency_ms, 99) for s in timed]):.2f} "
            f"({sum(s.handed for s in timed)}/{sum(len(s.latency_ms) for s in timed)})"
            if timed
            else "-"
        )
        nodes = sorted({node for s in runs for node in s.per_node})
        per_node = " / ".join(f"{median([s.node_per_job()[n] for s in runs]):.1f}" for n in nodes)
        rows.append(
            [
                f"{setup.key}: {setup.label}",
                fmt_rate(median([s.rate for s in runs])),
                f"{median([s.per_job for s in runs]):.1f}",
                per_node,
                f"{100 * median([s.busiest_share for s in runs]):.0f}%",
                f"{median([s.busiest_redis_cpu_us for s in runs]):.0f}",
                f"{median([1000 * s.worker_cpu_s / s.jobs for s in runs]):.2f}",
                latency,
            ]
        )
    return markdown_table(headers, rows)


def _attribution_table(attribution: Attribution) -> str:
    headers = [f"cluster, 1 worker, {attribution.jobs:,} jobs, MONITOR: commands by key", "cmds/job", "per node"]
    rows = [
        [
            group,
            f"{attribution.per_job(group):.2f}",
            " / ".join(f"{node.rsplit(':', 1)[1]} {v:.2f}" for node, v in attribution.per_node_job(group).items()),
        ]
        for group in attribution.groups
    ]
    return markdown_table(headers, rows)


def _arithmetic(samples: dict[str, list[Sample]], attribution: Attribution) -> list[str]:
    """The notes: shards for a rate, and where the single keys stop it (see the module docstring)."""
    c_part = attribution.per_job(PARTITIONED) + attribution.per_job(NO_KEY) + attribution.per_job(SPUBLISH)
    hot_by_node: dict[str, float] = defaultdict(float)
    for group in (*SINGLE_KEY_GROUPS, PUBLISH):
        for node, value in attribution.per_node_job(group).items():
            hot_by_node[node] += value
    hot_node, c_hot = max(hot_by_node.items(), key=lambda item: item[1]) if hot_by_node else ("-", 0.0)
    events = attribution.per_job(EVENTS)
    events_nodes = ", ".join(attribution.per_node_job(EVENTS)) or "-"
    worker_keys = attribution.per_job(WORKER_KEYS)
    notes = [
        f"{attribution.jobs:,}-job MONITOR drain: {c_part:.2f} cmds/job on partitioned keys (and keyless, and "
        f"SPUBLISH {attribution.per_job(SPUBLISH):.3f}), "
        f"spread over the masters; single keys: events stream {events:.3f} (node {events_nodes}), "
        f"worker keys {worker_keys:.3f}, registry {attribution.per_job(REGISTRY):.3f}, "
        f"other {attribution.per_job(OTHER):.3f}, PUBLISH {attribution.per_job(PUBLISH):.3f} cmds/job; "
        f"busiest single-key node {hot_node}: c_hot {c_hot:.3f} cmds/job",
        f"at ~{CAPACITY:,} simple cmds/s per Redis core: masters S = ceil(R x {c_part:.2f} / "
        f"({CAPACITY:,} - R x {c_hot:.3f}))",
    ]
    for rate in TARGET_RATES:
        shards = shards_needed(rate, c_part, c_hot)
        notes.append(
            f"R = {rate:,} jobs/s: "
            + (f"{shards} master(s)" if shards is not None else f"out of reach: the node of {hot_node} saturates")
        )
    if c_hot > 0:
        notes.append(
            f"ceiling from single keys: R_max = {CAPACITY:,} / {c_hot:.3f} = {CAPACITY / c_hot:,.0f} jobs/s "
            f"(events stream alone: {CAPACITY / events if events else math.inf:,.0f} jobs/s); a command inside "
            "a script costs less than a round trip, and heartbeats are per second, not per job: both make these "
            "figures conservative"
        )
    per_command = {key: median([s.redis_us_per_command for s in runs]) for key, runs in samples.items() if runs}
    if per_command:
        measured = ", ".join(f"{key} {us:.1f} us ({1e6 / us:,.0f} cmds/s)" for key, us in per_command.items() if us > 0)
        notes.append(
            f"measured redis-server CPU per command, every node: {measured}, against the {CAPACITY:,} cmds/s "
            "assumed; a cluster node pays more per command (cluster bookkeeping, classic PUBLISHes over the bus, "
            "more processes on 2 cores); CPU ticks are 10 ms, so a quick run's figure is rough"
        )
    one = samples["A"]
    if one:
        notes.append(
            f"one Redis at {median([s.rate for s in one]):,.0f} jobs/s x {median([s.per_job for s in one]):.1f} "
            f"cmds/job = {median([s.rate * s.per_job for s in one]):,.0f} cmds/s on its one core "
            "(the bench machine has 2 cores for every process: workers, producer and Redis nodes share them)"
        )
    notes.append(
        f"events stream {attribution.events_key}: CLUSTER KEYSLOT {attribution.events_slot}, "
        f"owned by {attribution.events_owner}; worker keys' tag slot {attribution.workers_slot}, "
        f"owned by {attribution.workers_owner}"
    )
    return notes
