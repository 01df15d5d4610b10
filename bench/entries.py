"""The registry of bench entries: ``python -m bench NAME`` runs ``ENTRIES[NAME]``.

A new entry is a module with ``async def run(options: RunOptions) -> EntryResult`` and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench import cancel, cluster, compare, dashboard, gateway, memory, noop, progress, recovery
from bench.options import RunOptions
from bench.report import EntryResult

__all__ = ["DEFAULT_ENTRY", "ENTRIES", "Entry"]

DEFAULT_ENTRY = "compare"


@dataclass(frozen=True)
class Entry:
    """One benchmark: what it measures and the coroutine that measures it."""

    description: str
    run: Callable[[RunOptions], Coroutine[Any, Any, EntryResult]]


ENTRIES: dict[str, Entry] = {
    "compare": Entry(
        "actionq and its peers, one run: drain of INCR jobs (and no-op jobs), start/result latency at 50 jobs/s, "
        "cancel, Redis commands and worker CPU per job",
        compare.run,
    ),
    "noop": Entry("drain N PluginB.calculate_square jobs through one worker (harness check)", noop.run),
    "cancel": Entry("cancel -> action sees it (actionq push vs raw arq abort), cancel -> cancelled", cancel.run),
    "progress": Entry("progress publish -> subscriber latency; slowdown of a tight reporting loop", progress.run),
    "gateway": Entry(
        "the HTTP gateway beside the Python client: submit rate and added latency, :batch, 1,000 SSE followers",
        gateway.run,
    ),
    "dashboard": Entry("dashboard pages with 100,000 jobs and 1,000 letters; 200 open job pages", dashboard.run),
    "memory": Entry("a worker running 5,000 concurrent sleeping jobs: peak RSS and its curve over a soak", memory.run),
    "recovery": Entry(
        "SIGKILL the worker running a job, two workers, default lease: kill -> the job starts on the other (<= 5 s)",
        recovery.run,
    ),
    "cluster": Entry(
        "incr drain on one Redis vs a 3-master cluster (1 and 3 workers): jobs/s, Redis commands per job per node, "
        "worker CPU; the shards a rate needs",
        cluster.run,
    ),
}
