"""The wire format: JSON, everywhere. There is no pickle in actionq.

A process that can write to Redis must not be able to run code on the workers: requests are
JSON in the job record, arq's results are JSON too (read them with arq's ``Job(...,
_deserializer=loads)``), and the arq pool's ``job_serializer`` / ``job_deserializer`` are these.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import PayloadTooLargeError

__all__ = ["WireError", "check_size", "dumps", "loads"]


class WireError(ValueError):
    """Bytes from Redis that are not valid actionq JSON (malformed or foreign data)."""


def dumps(obj: Any) -> bytes:
    """Serialize ``obj`` to compact JSON bytes; raises ``TypeError`` for non-JSON values."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes; anything else (pickle, garbage) raises :class:`WireError`."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not valid JSON: {exc}") from exc


def check_size(what: str, data: bytes, limit: int) -> bytes:
    """Return ``data`` if it fits ``limit`` bytes, else raise :class:`PayloadTooLargeError`."""
    if len(data) > limit:
        raise PayloadTooLargeError(what, len(data), limit)
    return data
