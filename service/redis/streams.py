"""Generator output: a capped Redis Stream per job (``Keys.job_stream``), ended by a terminal marker.

Entry ids are explicit: item ``n`` (0-based) is entry ``0-(n+1)``, so "resume from item ``k``" is
``XREAD ... STREAMS <key> 0-k`` — O(1), no scanning — and a reader detects trimmed items by the
gap between the index it expects and the first id it gets. Entries (field values are JSON)::

    0-1  {"v": <item 0>}
    0-2  {"v": <item 1>}
    ...
    0-(N+1)  {"end": "succeeded" | "failed" | "timed_out" | "cancelled", "count": N, "error": <ErrorInfo>}

(``error`` only when the run did not succeed.) Items are added with ``MAXLEN ~ stream_max_items``:
Redis trims whole radix-tree nodes only, so the stream never holds *fewer* than the cap's latest
items (a reader less than the cap behind loses nothing) and trimming stays O(1) amortised; the
terminal marker is added without trimming, so it never pushes an item out. The stream is deleted
when an attempt starts (a re-run restarts it; explicit ids require it), lives for the pending TTL
while the job runs and for the job's result TTL after the marker: never a key without a TTL.

Readers block on ``XREAD BLOCK`` rather than on pub/sub: the stream is its own push channel and
its own durable copy, so there is nothing to deduplicate and no per-item ``PUBLISH``.

This module is the format, shared by both sides: the worker writes with
:class:`service.worker.streams.StreamWriter`, callers read with :func:`service.client.streams.follow`.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import ErrorInfo
from service.models import JobState

__all__ = ["COUNT", "END", "ERROR", "ITEM", "StreamEnd", "entry_id", "entry_index"]

ITEM = b"v"
END = b"end"
COUNT = b"count"
ERROR = b"error"


def entry_id(index: int) -> str:
    """The stream entry id of item ``index`` (0-based): ``0-(index+1)``."""
    return f"0-{index + 1}"


def entry_index(raw_id: bytes | str) -> int:
    """Inverse of :func:`entry_id`."""
    text = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    return int(text.partition("-")[2]) - 1


@dataclass(frozen=True)
class StreamEnd:
    """The terminal marker: how the run ended, how many items it produced, and its error."""

    state: JobState
    count: int
    error: ErrorInfo | None = None

    def fields(self) -> dict[bytes, bytes]:
        """The marker's stream entry fields."""
        out = {END: self.state.value.encode(), COUNT: str(self.count).encode()}
        if self.error is not None:
            out[ERROR] = self.error.model_dump_json().encode()
        return out

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> StreamEnd:
        """The marker from its stream entry fields."""
        error = fields.get(ERROR)
        return cls(
            state=JobState(fields[END].decode()),
            count=int(fields.get(COUNT, b"0")),
            error=ErrorInfo.model_validate_json(error) if error else None,
        )
