"""A worker's CPU time and memory, read from /proc for the process and every process under it.

A contender's worker is one process (Dramatiq's programmatic ``Worker`` included), but a library
that forks (RQ's default worker, Celery's prefork pool) would hide work in children: the figures
are summed over the process tree, so they stay honest whatever the pool.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "parse_stat_cpu_ticks", "process_tree", "rss_mib"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def parse_stat_cpu_ticks(stat: str) -> int:
    """user + system CPU ticks from the text of ``/proc/<pid>/stat`` (fields 14 and 15).

    The command name (field 2) is in parentheses and may hold spaces or ``)``: fields are
    counted from the last ``)``.
    """
    head, sep, rest = stat.rpartition(")")
    if not sep or not head:
        raise ValueError(f"not a /proc/<pid>/stat line: {stat[:80]!r}")
    fields = rest.split()
    # rest starts at field 3 (state), so utime (14) and stime (15) are rest[11] and rest[12].
    return int(fields[11]) + int(fields[12])


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in children.read_text().split()]
            except OSError:  # the thread or the process ended meanwhile
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants."""
    ticks = 0
    for member in process_tree(pid):
        try:
            ticks += parse_stat_cpu_ticks(Path(f"/proc/{member}/stat").read_text())
        except (OSError, ValueError):
            continue
    return ticks / _TICKS_PER_S


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` and its descendants (``VmRSS``; ``VmHWM`` for the peaks), MiB."""
    total_kib = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total_kib += sum(int(line.split()[1]) for line in lines if line.startswith(field + ":"))
    return total_kib / 1024
