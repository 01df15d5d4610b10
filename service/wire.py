"""The wire format: JSON, everywhere. There is no pickle in actionq.

A process that can write to Redis must not be able to run code on the workers: requests are
JSON in the job record, arq's results are JSON too (read them with arq's ``Job(...,
_deserializer=loads)``), and the arq pool's ``job_serializer`` / ``job_deserializer`` are these.
"""

from __future__ import annotations

import json
import math
from typing import Any

from service.errors import PayloadTooLargeError

__all__ = ["MAX_DEPTH", "WireError", "bad_key", "check_size", "dumps", "loads", "not_json"]


# Deeper values are refused before they are sent: pydantic stops serializing at about 255 levels,
# and json at Python's recursion limit; a request or a record wraps params and results in a few
# more levels, which must still read back.
MAX_DEPTH = 128
# Larger integers are refused too: pydantic's JSON reader stops at 4,300 digits (and Python's
# int() from text as well); about 4,200 digits here.
_MAX_INT_BITS = 14_000


class WireError(ValueError):
    """Bytes from Redis that are not valid actionq JSON (malformed or foreign data)."""


def dumps(obj: Any) -> bytes:
    """Serialize ``obj`` to compact JSON bytes.

    Raises ``TypeError`` for values JSON has no type for, ``ValueError`` for NaN and ±Infinity
    (JSON cannot carry them) and for values nested too deeply to encode.
    """
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except RecursionError:
        raise ValueError("nested too deeply to encode as JSON") from None


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes; anything else (pickle, garbage) raises :class:`WireError`."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"not valid JSON: {exc}") from exc
    except RecursionError:
        raise WireError("not valid JSON: nested too deeply to read") from None


def check_size(what: str, data: bytes, limit: int) -> bytes:
    """Return ``data`` if it fits ``limit`` bytes, else raise :class:`PayloadTooLargeError`."""
    if len(data) > limit:
        raise PayloadTooLargeError(what, len(data), limit)
    return data


def _utf8(text: str) -> bool:
    """True if ``text`` has a UTF-8 form (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def bad_key(key: object) -> str:
    """What makes ``key`` no JSON object key ('' if nothing)."""
    if not isinstance(key, str):
        return f"key {key!r} is not JSON (keys are strings)"
    if not _utf8(key):
        return f"key {key!r} is not JSON (a lone surrogate has no UTF-8 form)"
    return ""


def _bad_scalar(item: object) -> str:
    """What makes ``item`` (not a list or a dict) no JSON value ('' if nothing)."""
    if item is None or isinstance(item, bool):
        return ""
    if isinstance(item, float):
        return "" if math.isfinite(item) else f"{item} is not JSON (NaN and ±Infinity have no JSON form)"
    if isinstance(item, int):
        return "" if item.bit_length() <= _MAX_INT_BITS else "an integer of more than 4,200 digits is not portable JSON"
    if isinstance(item, str):
        return "" if _utf8(item) else "a string with a lone surrogate is not JSON (it has no UTF-8 form)"
    return f"a {type(item).__name__} is not JSON (it has no JSON form)"


def not_json(value: Any, where: str = "") -> tuple[str, str] | None:
    """The first place in ``value`` that JSON cannot carry, as ``(dotted path, what is wrong)``; None if all can.

    NaN and ±Infinity (which ``json`` would write as invalid JSON and pydantic as ``null``), keys
    that are not strings, strings with lone surrogates, integers of more than about 4,200 digits,
    values of no JSON type, and nesting deeper than :data:`MAX_DEPTH`.
    """
    stack: list[tuple[str, Any, int]] = [(where, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return path or "(value)", f"not JSON: nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, dict):
            for key, child in item.items():
                problem = bad_key(key)
                if problem:
                    return path or "(value)", problem
                stack.append((f"{path}.{key}" if path else key, child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}.{i}" if path else str(i), child, depth + 1) for i, child in enumerate(item))
        else:
            bad = _bad_scalar(item)
            if bad:
                return path or "(value)", bad
    return None
