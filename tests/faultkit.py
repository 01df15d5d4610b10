"""The fault suite's engine: real workers, a producer, faults, and a tally of what happened.

Every job is ``journal.work`` (``tests/fixtures/plugins/journal``): it appends a line to a journal
file outside the workers when it starts, ends or is stopped, so what ran is known whatever the
workers and Redis went through. A :class:`Run` starts worker processes on a Redis URL (a server
of the test's own, or a :class:`FaultyProxy` in front of it), submits jobs from a producer that
resubmits under the same job id when a submit fails (submits are idempotent by id: that is how a
service is expected to submit through an outage), applies faults, and :func:`tally` counts, from
the journal and the final records:

* **lost** — accepted (a submit returned) and then no record of it;
* **stuck** — not ended when the run's deadline came;
* **failed**, **wrong** — ended other than ``succeeded``, or with a result that is not ``2n``;
* **ran after success** — a start journalled after the job's success was recorded;
* **overlapping** — an attempt started while an earlier one was still running on a worker that
  was alive (a killed worker's attempt ends at its kill);
* **recovery** — per killed (or cut off) worker, from the kill (or the cut) to the re-start
  elsewhere of each job it was running; per Redis outage, from its end to the first job started
  after it.

``tests/integration/test_fault_suite.py`` runs small rounds of each in ``make check``;
``python -m tests.faultkit`` runs bigger ones and prints the figures (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service import BrokerError, JobClient, JobNotFoundError, JobState
from service.keys import Keys
from service.models import JobRecord
from service.processes.embedded import EmbeddedRedis, find_server_binary
from service.processes.spawn import has_pid, spawn_worker
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
JOURNAL_PLUGIN = {"name": "journal", "path": str(REPO_ROOT / "tests" / "fixtures" / "plugins" / "journal")}
AOF = ["--appendonly", "yes", "--appendfsync", "always"]
WORKER_SETTINGS: dict[str, Any] = {"poll_delay_s": 0.05, "heartbeat_s": 0.5, "lease_s": 1.0, "concurrency": 8}
LONG_WORK_MS = 1500
_TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}


def now_ms() -> int:
    return int(time.time() * 1000)


# -- the journal ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Entry:
    """One journal line: ``S`` (started), ``D`` (done) or ``C`` (stopped by a cancel)."""

    mark: str
    attempt: int
    pid: int
    ms: int


def read_journal(path: Path) -> dict[str, list[Entry]]:
    """Job id -> its entries, in journal order."""
    entries: dict[str, list[Entry]] = defaultdict(list)
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        mark, job_id, attempt, pid, ms = line.split()
        entries[job_id].append(Entry(mark, int(attempt), int(pid), int(ms)))
    return entries


# -- a proxy that resets and blackholes connections -----------------------------------------------
class FaultyProxy:
    """A loopback TCP proxy in front of a Redis server: :meth:`reset` aborts every connection
    (an RST each way), :meth:`blackhole` stops forwarding bytes (connections stay open, as in a
    partition) until :meth:`heal`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.heal()
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def reset(self) -> None:
        """Abort every proxied connection, both sides (SO_LINGER 0: an RST, not a FIN)."""
        for pair in list(self._pairs):
            for writer in pair:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()
        self._pairs.clear()

    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the proxy is closing
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


# -- a run ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """Workers on ``worker_url``, a producer and the checks on ``direct_url``, in ``namespace``."""

    worker_url: str
    direct_url: str
    tmp: Path
    namespace: str = field(default_factory=lambda: "f" + uuid.uuid4().hex[:12])
    settings: dict[str, Any] = field(default_factory=lambda: dict(WORKER_SETTINGS))
    work_ms: int = 30
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kills: list[tuple[int, int]] = field(default_factory=list)
    """(pid, epoch ms) of each worker killed."""
    outages: list[tuple[int, int]] = field(default_factory=list)
    """(start, end) epoch ms of each Redis outage."""
    cut_off: list[tuple[int, int]] = field(default_factory=list)
    """(pid, epoch ms) of each worker whose connections were reset or blackholed."""
    accepted: dict[str, int] = field(default_factory=dict)
    """Job id -> its ``n``, once a submit of it returned."""
    resubmits: int = 0
    logs: dict[int, Path] = field(default_factory=dict)
    """Worker pid -> its log file."""

    @property
    def journal(self) -> Path:
        return self.tmp / "journal.log"

    def _config_path(self) -> Path:
        path = self.tmp / "worker.yml"
        if not path.exists():
            path.write_text(yaml.safe_dump({"plugins": [JOURNAL_PLUGIN], **self.settings}))
        return path

    def spawn(self, url: str | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker, on ``url`` or the run's (it registers on its own; :meth:`ready` waits for it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
        env |= {"ACTIONQ_REDIS_URL": url or self.worker_url, "ACTIONQ_NAMESPACE": self.namespace}
        env |= {"ACTIONQ_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        log = self.tmp / f"worker-{len(self.workers) + 1}.log"
        proc = spawn_worker(self._config_path(), env, log_path=log, cwd=REPO_ROOT)
        self.workers.append(proc)
        self.logs[proc.pid] = log
        return proc

    async def ready(self, client: JobClient, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not has_pid(await client.redis.zrange(Keys(self.namespace).workers(), 0, -1), proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {proc.pid} did not register (exit {proc.poll()}):\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        self.kills.append((proc.pid, now_ms()))
        proc.send_signal(sig)

    def stop_all(self, timeout_s: float = 30) -> dict[int, int | None]:
        """SIGTERM every live worker; pid -> exit code (``None``: it had to be killed)."""
        codes: dict[int, int | None] = {}
        for proc in self.live():
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                code: int | None = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to its log
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = None
            codes[proc.pid] = code
        return codes

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.tmp.glob("worker-*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    async def produce(self, client: JobClient, count: int, rate: float) -> None:
        """Submit ``count`` jobs at about ``rate`` per second; a failed submit is sent again, same id."""
        start = time.monotonic()
        for i in range(count):
            job_id = f"j{i}"
            # One job in twenty outlasts the lease: renewed while it runs, lapsed under a partition.
            work_ms = self.work_ms if i % 20 else LONG_WORK_MS
            params = {"n": i, "journal": str(self.journal), "work_ms": work_ms}
            while True:
                try:
                    await client.submit("journal", "work", params, job_id=job_id, validate=False)
                    break
                except BrokerError:
                    self.resubmits += 1
                    await asyncio.sleep(0.05)
            self.accepted[job_id] = i
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def settle(self, client: JobClient, timeout_s: float) -> dict[str, JobRecord | None]:
        """Wait (up to ``timeout_s``) until every accepted job ended; job id -> final record (None: lost)."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.accepted)
        records: dict[str, JobRecord | None] = {}
        while True:
            for job_id in sorted(pending):
                record = await _record(client, job_id)
                records[job_id] = record
                if record is None or record.state in _TERMINAL:
                    pending.discard(job_id)
            if not pending or time.monotonic() > deadline:
                return records
            await asyncio.sleep(0.2)


async def _record(client: JobClient, job_id: str) -> JobRecord | None:
    while True:
        try:
            return await client.job(job_id).record()
        except JobNotFoundError:
            return None
        except BrokerError:
            await asyncio.sleep(0.1)


# -- the tally ------------------------------------------------------------------------------------
@dataclass
class Figures:
    """What one run did and what became of its jobs."""

    scenario: str
    jobs: int
    faults: int
    lost: int = 0
    stuck: int = 0
    failed: int = 0
    wrong: int = 0
    ran_after_success: int = 0
    overlapping: int = 0
    reruns: int = 0
    """Jobs started more than once (expected where a worker died or a lease lapsed under them)."""
    resubmits: int = 0
    recovery_ms: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.stuck or self.failed or self.wrong or self.ran_after_success or self.overlapping)

    def row(self) -> str:
        rec = sorted(self.recovery_ms)
        median = f"{statistics.median(rec) / 1000:.2f}" if rec else "-"
        worst = f"{rec[-1] / 1000:.2f}" if rec else "-"
        cells = [self.scenario, self.jobs, self.faults, self.lost, self.stuck, self.failed + self.wrong]
        cells += [self.ran_after_success, self.overlapping, self.reruns, median, worst]
        return "| " + " | ".join(str(cell) for cell in cells) + " |"


HEADER = (
    "| scenario | jobs | faults | lost | stuck | failed or wrong | ran after success | overlapping "
    "| re-run | recovery median (s) | recovery worst (s) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def tally(run: Run, scenario: str, records: dict[str, JobRecord | None], faults: int) -> Figures:
    journal = read_journal(run.journal)
    killed = dict(run.kills)
    figures = Figures(scenario, len(run.accepted), faults, resubmits=run.resubmits)
    for job_id, n in run.accepted.items():
        record = records.get(job_id)
        entries = journal.get(job_id, [])
        if record is None:
            figures.lost += 1
            figures.problems.append(f"{job_id}: lost")
            continue
        if record.state not in _TERMINAL:
            figures.stuck += 1
            figures.problems.append(f"{job_id}: stuck {record.state.value}, attempt {record.attempt}")
            continue
        if record.state is not JobState.SUCCEEDED:
            figures.failed += 1
            figures.problems.append(f"{job_id}: {record.state.value} {record.error}")
        elif record.result != 2 * n:
            figures.wrong += 1
            figures.problems.append(f"{job_id}: result {record.result!r}, not {2 * n}")
        if record.state is JobState.SUCCEEDED and record.finished_at_ms:
            late = [e for e in entries if e.mark == "S" and e.ms > record.finished_at_ms]
            if late:
                figures.ran_after_success += 1
                figures.problems.append(f"{job_id}: started again after its success ({late})")
        starts = [e for e in entries if e.mark == "S"]
        figures.reruns += len(starts) > 1
        if _overlaps(entries, killed):
            figures.overlapping += 1
            figures.problems.append(f"{job_id}: attempts overlapped: {entries}")
    figures.recovery_ms = _recoveries(run, journal)
    return figures


def _overlaps(entries: list[Entry], killed: dict[int, int]) -> bool:
    """True if an attempt started while an earlier one ran on a live worker."""
    runs: list[tuple[int, int]] = []  # (start, end) per attempt
    for i, entry in enumerate(entries):
        if entry.mark != "S":
            continue
        ends = [e.ms for e in entries[i + 1 :] if e.pid == entry.pid and e.attempt == entry.attempt and e.mark != "S"]
        end = ends[0] if ends else killed.get(entry.pid, 2**62)
        runs.append((entry.ms, end))
    return any(later_start < end for k, (_, end) in enumerate(runs) for later_start, _ in runs[k + 1 :])


def _recoveries(run: Run, journal: dict[str, list[Entry]]) -> list[int]:
    out = []
    for pid, hit_at in run.kills + run.cut_off:
        for entries in journal.values():
            before = [e for e in entries if e.pid == pid and e.ms <= hit_at]
            if before and before[-1].mark == "S":  # running there when the worker was hit
                # Going again: started anywhere, or (a worker cut off for a moment) ended in place.
                again = [e.ms for e in entries if e.ms > hit_at and (e.mark == "S" or e.mark == "D")]
                if again:
                    out.append(again[0] - hit_at)
    starts = sorted(e.ms for entries in journal.values() for e in entries if e.mark == "S")
    for _, ended in run.outages:
        after = [ms for ms in starts if ms > ended]
        if after:
            out.append(after[0] - ended)
    return out


# -- the scenarios --------------------------------------------------------------------------------
async def _run_with(
    run: Run,
    urls: list[str],
    jobs: int,
    rate: float,
    faults: Callable[[JobClient], Awaitable[int]],
    scenario: str,
) -> Figures:
    """A worker per URL in ``urls``, the producer, ``faults``, then the tally."""
    settings = Settings(redis_url=run.direct_url, namespace=run.namespace, reconnect_s=60)
    try:
        async with await JobClient.connect(settings=settings) as client:
            for proc in [run.spawn(url) for url in urls]:
                await run.ready(client, proc)
            producer = asyncio.create_task(run.produce(client, jobs, rate))
            count = await faults(client)
            await producer
            records = await run.settle(client, timeout_s=60 + jobs * run.work_ms / 1000)
            figures = tally(run, scenario, records, count)
    finally:
        codes = await asyncio.to_thread(run.stop_all)  # off the loop: a proxy on it must keep forwarding
    for pid, code in codes.items():
        if code not in (0, -9):
            tail = "\n".join(run.logs[pid].read_text(errors="replace").splitlines()[-60:])
            figures.problems.append(f"worker {pid} exited {code} on SIGTERM; the end of its log:\n{tail}")
    return figures


async def failover_under_load(url: str, tmp: Path, kill: Callable[[], None], scenario: str) -> None:
    """A worker and a producer on ``url`` (300 short jobs at 60/s); once a third are accepted,
    ``kill()`` (blocking: kill the master, wait for its successor), then the checks every failover
    test makes: every acknowledged job ended, none lost, none run again after its success, a job
    was running at the kill, none started more than twice (Sentinel's test and the Cluster's)."""
    run = Run(url, url, tmp)
    jobs, rate = 300, 60.0

    async def fault(client: JobClient) -> int:
        async with asyncio.timeout(30):  # a third of the jobs submitted, some done, some running
            while len(run.accepted) < jobs // 3 or not run.journal.exists():
                await asyncio.sleep(0.02)
        start = now_ms()
        await asyncio.to_thread(kill)
        run.outages.append((start, now_ms()))
        return 1

    figures = await _run_with(run, [url], jobs, rate, fault, scenario)
    assert figures.jobs == jobs
    assert figures.clean, "\n".join([figures.row(), *figures.problems[:20], run.log_tail()])
    assert not figures.problems, "\n".join(figures.problems)  # the worker drained and exited 0 at the end
    assert figures.resubmits > 0  # the producer did meet the failover
    journal = read_journal(run.journal)
    killed_at = run.outages[0][0]
    assert any(_running_at(entries, killed_at) for entries in journal.values()), "no job ran at the kill"
    for job_id, entries in journal.items():  # each finished (clean, above) and started at most twice
        assert len([e for e in entries if e.mark == "S"]) <= 2, f"{job_id} started more than twice: {entries}"


def _running_at(entries: list[Entry], ms: int) -> bool:
    """True if an attempt had started by ``ms`` and not ended (done or stopped) by then."""
    before = [e for e in entries if e.ms <= ms]
    return bool(before) and before[-1].mark == "S"


async def crash_loop(
    url: str, tmp: Path, *, jobs: int, kills: int, workers: int = 3, rate: float = 150, seed: int = 0
) -> Figures:
    """SIGKILL a random worker mid-load ``kills`` times (every fourth a SIGTERM drain), each replaced."""
    rng = random.Random(seed)
    run = Run(url, url, tmp)
    span_s = jobs / rate

    async def faults(client: JobClient) -> int:
        for k in range(kills):
            await asyncio.sleep(rng.uniform(0.5, 1.5) * span_s / (kills + 1))
            victim = rng.choice(run.live())
            run.kill(victim, signal.SIGTERM if k % 4 == 3 else signal.SIGKILL)
            await run.ready(client, run.spawn())
        return kills

    return await _run_with(run, [url] * workers, jobs, rate, faults, "workers killed (SIGKILL; every 4th SIGTERM)")


async def redis_restarts(
    server: EmbeddedRedis, tmp: Path, *, jobs: int, restarts: int, workers: int = 2, rate: float = 150, seed: int = 0
) -> Figures:
    """Stop Redis (append-only file, fsync always) mid-load, SIGTERM and SIGKILL in turn, and start it again."""
    rng = random.Random(seed)
    run = Run(server.url, server.url, tmp)
    span_s = jobs / rate

    async def faults(client: JobClient) -> int:
        for k in range(restarts):
            await asyncio.sleep(rng.uniform(0.5, 1.5) * span_s / (restarts + 1))
            start = now_ms()
            await asyncio.to_thread(server.kill if k % 2 else server.terminate)
            await asyncio.sleep(rng.uniform(0.2, 1.5))  # down this long
            await asyncio.to_thread(server.start)
            run.outages.append((start, now_ms()))
        return restarts

    return await _run_with(run, [server.url] * workers, jobs, rate, faults, "Redis restarted (AOF; SIGTERM, SIGKILL)")


async def network_faults(
    server: EmbeddedRedis, tmp: Path, *, jobs: int, faults_n: int, workers: int = 3, rate: float = 150, seed: int = 0
) -> Figures:
    """Each worker reaches Redis through a proxy of its own; one worker's proxy at a time resets
    every connection, or blackholes them (a partition: the others go on) for longer than the
    lease, every other time, then resets them."""
    rng = random.Random(seed)
    proxies = [FaultyProxy(server.port) for _ in range(workers)]
    for proxy in proxies:
        await proxy.start()
    run = Run(server.url, server.url, tmp)
    span_s = jobs / rate

    async def faults(client: JobClient) -> int:
        for k in range(faults_n):
            await asyncio.sleep(rng.uniform(0.5, 1.5) * span_s / (faults_n + 1))
            i = rng.randrange(workers)
            proxy = proxies[i]
            run.cut_off.append((run.workers[i].pid, now_ms()))
            if k % 2 == 0:
                proxy.reset()
            else:
                proxy.blackhole()
                await asyncio.sleep(rng.uniform(1.5, 3))  # partitioned this long (the lease is 1 s)
                proxy.reset()
                proxy.heal()
        return faults_n

    try:
        urls = [proxy.url for proxy in proxies]
        return await _run_with(run, urls, jobs, rate, faults, "connections reset / blackholed (proxy)")
    finally:
        for proxy in proxies:
            await proxy.close()


# -- the figures for the docs ---------------------------------------------------------------------
async def _round(tmp: Path, r: int, args: argparse.Namespace, binary: str) -> list[Figures]:
    """One round of each scenario, each on a Redis server of its own."""
    for name in ("kill", "restart", "net"):
        (tmp / f"{name}{r}").mkdir()
    with EmbeddedRedis(binary=binary) as server:
        killed = await crash_loop(server.url, tmp / f"kill{r}", jobs=args.jobs, kills=args.kills, seed=r)
    server = EmbeddedRedis(binary=binary, extra_args=AOF)
    server.start()
    try:
        restarted = await redis_restarts(server, tmp / f"restart{r}", jobs=args.jobs, restarts=args.restarts, seed=r)
    finally:
        server.stop()
    with EmbeddedRedis(binary=binary) as server:
        cut = await network_faults(server, tmp / f"net{r}", jobs=args.jobs, faults_n=args.restarts, seed=r)
    return [killed, restarted, cut]


async def _main(args: argparse.Namespace) -> int:
    binary = find_server_binary()
    rows: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="actionq-faults-") as base:
        for r in range(args.rounds):
            figures = await _round(Path(base), r, args, binary)
            for f in figures:
                print(f.row(), *f.problems[:10], sep="\n", flush=True)
            rows += figures
    print(HEADER)
    for f in rows:
        print(f.row())
    return 0 if all(f.clean for f in rows) else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faultkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per scenario and round")
    parser.add_argument("--kills", type=int, default=20, help="workers killed per round")
    parser.add_argument("--restarts", type=int, default=6, help="Redis restarts and network faults per round")
    parser.add_argument("--rounds", type=int, default=1)
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
