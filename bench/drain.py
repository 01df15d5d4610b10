"""The drain phase: a producer process enqueues N jobs while the contender's one worker runs them.

Timed from the producer's first enqueue to the moment the run's counter reaches its final value
(every ``incr`` job adds one; a no-op drain ends with one ``incr`` job, see :mod:`bench.producer`),
read with ``GET`` every ``PROBE_S`` on the bench's own connection: the counter is the completion
check, not anything that counts keys. A counter past its final value means a job ran twice, which
fails the run. Then, after ``SETTLE_S`` (the last jobs' own bookkeeping), the Redis commands of the
window (``INFO commandstats`` delta, less the bench's ``GET``s) and the worker's CPU time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.peers.base import REPO_ROOT, Contender, PeerError
from bench.procstats import cpu_seconds
from bench.redisstats import command_calls, commands_delta

__all__ = ["DrainSample", "drain", "expected_count", "remaining"]

PROBE_S = 0.005
SETTLE_S = 0.25
READY_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DrainSample:
    """One drain: how many jobs, how long, and what it cost."""

    jobs: int
    seconds: float
    """First enqueue -> the counter at its final value."""
    enqueue_seconds: float
    """First enqueue -> the last enqueue returned (the producer's own figure)."""
    commands: Counter[str]
    cpu_s: float

    @property
    def rate(self) -> float:
        """Drain jobs/s."""
        return self.jobs / self.seconds

    @property
    def enqueue_rate(self) -> float:
        """The producer's jobs/s."""
        return self.jobs / self.enqueue_seconds

    @property
    def commands_per_job(self) -> float:
        """Redis commands per job, the job's own ``INCR`` included."""
        return sum(self.commands.values()) / self.jobs

    @property
    def cpu_ms_per_job(self) -> float:
        """Worker CPU (user + system) per job, in ms."""
        return 1000 * self.cpu_s / self.jobs


def expected_count(jobs: int, body: str) -> int:
    """How much the counter grows in one drain: one per ``incr`` job (a no-op drain has one)."""
    return jobs if body == "incr" else 1


def remaining(value: int, target: int, *, label: str = "") -> int:
    """How many increments are still to come; a counter past ``target`` (a job ran twice) is an error."""
    if value > target:
        raise PeerError(f"{label}: the counter is {value}, past its final value {target}: a job ran more than once")
    return target - value


async def drain(contender: Contender, jobs: int, body: str) -> DrainSample:
    """Run one drain of ``jobs`` ``body`` jobs through ``contender``'s worker (started)."""
    with tempfile.TemporaryDirectory(prefix="actionq-bench-producer-") as tmp:
        errors = Path(tmp) / "stderr"
        with errors.open("wb") as stderr:
            producer = await asyncio.create_subprocess_exec(
                *_command(contender, jobs, body),
                cwd=REPO_ROOT,
                env=_env(contender),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        try:
            return await _run(contender, producer, jobs, body, errors)
        finally:
            if producer.returncode is None:
                producer.kill()
                await producer.wait()


def _command(contender: Contender, jobs: int, body: str) -> list[str]:
    return [sys.executable, "-m", "bench.producer", contender.producer_kind, str(jobs), body]


def _env(contender: Contender) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    return env | contender.workload.env() | {"PYTHONUNBUFFERED": "1"}


async def _run(
    contender: Contender, producer: asyncio.subprocess.Process, jobs: int, body: str, errors: Path
) -> DrainSample:
    assert producer.stdin is not None
    assert producer.stdout is not None
    label = contender.label
    line = await asyncio.wait_for(producer.stdout.readline(), READY_TIMEOUT_S)
    if line.strip() != b"ready":
        await producer.wait()
        raise PeerError(f"{label}: producer did not start: {_tail(errors)}")
    probe, counter = contender.probe, contender.workload.counter
    target = int(await probe.get(counter) or 0) + expected_count(jobs, body)
    before, cpu_before = await command_calls(probe), cpu_seconds(contender.pid)
    producer.stdin.write(b"go\n")
    await producer.stdin.drain()
    gets = await _wait_counter(contender, producer, target, errors)
    t_done = time.time()
    out = await asyncio.wait_for(producer.stdout.readline(), READY_TIMEOUT_S)
    await producer.wait()
    if producer.returncode != 0 or not out:
        raise PeerError(f"{label}: producer exited with {producer.returncode}: {_tail(errors)}")
    stamps = json.loads(out)
    await asyncio.sleep(SETTLE_S)
    calls = commands_delta(before, await command_calls(probe), Counter({"get": gets}))
    cpu_s = cpu_seconds(contender.pid) - cpu_before
    seconds = t_done - stamps["t_first"]
    return DrainSample(jobs, seconds, stamps["t_end"] - stamps["t_first"], calls, cpu_s)


async def _wait_counter(contender: Contender, producer: asyncio.subprocess.Process, target: int, errors: Path) -> int:
    """Poll the counter until it reaches ``target``; the number of ``GET``s made."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    gets = 0
    while True:
        gets += 1
        value = int(await contender.probe.get(contender.workload.counter) or 0)
        if not remaining(value, target, label=contender.label):
            return gets
        if producer.returncode not in (None, 0):
            raise PeerError(f"{contender.label}: producer failed: {_tail(errors)}")
        if time.monotonic() > deadline:
            raise PeerError(f"{contender.label}: {target - value} jobs unfinished after {DRAIN_TIMEOUT_S:g} s")
        await asyncio.sleep(PROBE_S)


def _tail(path: Path) -> str:
    """The end of what the producer wrote to stderr (for an error message)."""
    return path.read_text(errors="replace")[-2000:]
