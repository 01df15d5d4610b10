"""What the bench reads off Redis and /proc: per-command call counts and a worker's peak RSS.

The bench's Redis is private, so the difference of two ``INFO commandstats`` snapshots is the
traffic of whatever ran in between. ``INFO`` itself is left out (the snapshots are INFO calls),
and so is what the bench's own probes issued (each contender counts its probe calls).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from redis.asyncio import Redis

__all__ = ["command_calls", "commands_delta", "peak_rss_mib", "top_commands"]

_EXCLUDED = frozenset({"info"})


async def command_calls(redis: Redis) -> Counter[str]:
    """Calls per command name since the server started (``INFO commandstats``), without INFO."""
    stats = await redis.info("commandstats")
    calls: Counter[str] = Counter()
    for key, value in stats.items():
        name = str(key).removeprefix("cmdstat_").lower()
        if name not in _EXCLUDED and isinstance(value, dict):
            calls[name] = int(value.get("calls", 0))
    return calls


def commands_delta(before: Counter[str], after: Counter[str], probes: Counter[str]) -> Counter[str]:
    """Calls made between two snapshots, less the bench's own probe calls (zero and below dropped)."""
    delta = Counter({name: after[name] - before.get(name, 0) - probes.get(name, 0) for name in after})
    return Counter({name: n for name, n in delta.items() if n > 0})


def top_commands(calls: Counter[str], per: float, n: int = 6) -> str:
    """``"evalsha 3.0, hset 2.0, ..."``: the ``n`` commonest commands, divided by ``per``."""
    return ", ".join(f"{name} {count / per:.2f}" for name, count in calls.most_common(n))


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far (``VmHWM`` in /proc/<pid>/status), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
