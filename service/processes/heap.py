"""A long-running process's heap once it has started (the worker, the gateway).

What exists then — modules, plugins, models, the app: ~90,000 objects in a worker — lives as long
as the process. :func:`settle_heap` freezes it (``gc.freeze``: out of the collector's sight, so a
full collection scans only what jobs and requests allocated since, and does not pause the loop for
tens of milliseconds) and collects the youngest generation after 10,000 net allocations rather
than CPython's 700. Almost everything a job allocates is freed by reference counting before that;
at 700 a worker draining jobs ran ~5,000 collections per 41,500 jobs, 0.7-1.1 s of its 10-15 s of
CPU, against 14-15 collections and 37-44 ms at 10,000 (docs/benchmarks.md). Cyclic garbage waits a
little longer for its collection; 10,000 objects are a few MiB at most.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

YOUNG_THRESHOLD = 10_000
"""Net allocations of tracked objects between two collections of the youngest generation."""


def settle_heap() -> None:
    """Freeze what exists now and collect the youngest generation every :data:`YOUNG_THRESHOLD` allocations."""
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
