"""arq's data format, in one place: its key prefixes, the job ids it sees and its result encoding.

actionq keeps arq's data model so that arq's own ``Job`` API reads actionq jobs:
``Job(keys.arq_job_id(job_id), redis, _queue_name=record.queue, _deserializer=service.wire.loads)``
gives ``status()`` (queued, deferred, in_progress, complete), ``result()`` and, once the job
ended, ``info()``. What of arq's format that takes:

* **queues** are arq's sorted sets of arq job ids, scored by run-at time in ms;
* **the lease** is arq's in-progress key, ``arq:in-progress:<arq job id>`` (its value: the
  worker id), so ``status()`` says ``in_progress`` while a job runs;
* **the result** is arq's result key, ``arq:result:<arq job id>``: arq's result object as JSON
  (:func:`encode_result`, never pickle), with actionq's final record of the job added under
  ``"actionq"`` by the settle script (arq ignores the extra key). Once a job has ended this is
  the only copy of its record (:func:`decode_final`).

arq's prefixes are global to the Redis database, not per queue, so an arq job id carries the
namespace: ``<namespace>:<job_id>`` (see :meth:`service.keys.Keys.arq_job_id`). arq's job body
(``arq:job:*``) and try counter (``arq:retry:*``) are not written: the request lives in the job
record and the record counts attempts. The worker side of arq (its ``Worker`` lifecycle) is
:mod:`service.worker.adapter`, the only module that imports arq.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import ErrorInfo
from service.wire import dumps

__all__ = ["FUNCTION", "IN_PROGRESS_PREFIX", "RESULT_PREFIX", "FinalRecordError", "decode_final", "encode_result"]

# arq's global key prefixes (``arq.constants``); a unit test keeps them equal to arq's.
IN_PROGRESS_PREFIX = "arq:in-progress:"
RESULT_PREFIX = "arq:result:"
# The one function name arq's results report (``Job.info().function``): actionq jobs are not arq functions.
FUNCTION = "run_action"


class FinalRecordError(ValueError):
    """An arq result that does not hold an actionq final record (foreign or damaged data)."""


def encode_result(
    *,
    arq_job_id: str,
    queue: str,
    attempt: int,
    request: bytes,
    enqueued_at_ms: int,
    started_at_ms: int,
    finished_at_ms: int,
    state: str,
    result: Any,
    error: ErrorInfo | None,
) -> bytes:
    """arq's result object of an ended job, as JSON (what ``Job.result()`` and ``Job.info()`` read).

    ``result()`` returns ``{"state", "result", "error"}`` (the error without its traceback);
    ``info().kwargs`` is ``{"request": <the job's request>}``: ``request`` must be JSON (it is
    spliced in as it is).
    """
    summary = {
        "state": state,
        "result": result,
        "error": None if error is None else error.model_dump(exclude={"traceback"}),
    }
    head = dumps(
        {
            "t": attempt,
            "f": FUNCTION,
            "a": [],
            "et": enqueued_at_ms,
            "s": state == "succeeded",
            "r": summary,
            "st": started_at_ms,
            "ft": finished_at_ms,
            "q": queue,
            "id": arq_job_id,
        }
    )
    return head[:-1] + b',"k":{"request":' + request + b"}}"


def decode_final(raw: bytes | str) -> dict[str, Any]:
    """The final record's hash fields (``request`` included, as JSON text) from an arq result.

    Raises :class:`FinalRecordError` when ``raw`` holds no actionq record.
    """
    try:
        final = json.loads(raw)
        fields: dict[str, Any] = final["actionq"]
        fields["request"] = json.dumps(final["k"]["request"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FinalRecordError(f"not an actionq final record: {exc}") from exc
    except RecursionError:
        raise FinalRecordError("not an actionq final record: nested too deeply to read") from None
    return fields
