"""arq's data format, in one place: its key prefixes, the job ids it sees and its result encoding.

actionq keeps arq's data model so that arq's own ``Job`` API reads actionq jobs:
``Job(keys.arq_job_id(job_id), redis, _queue_name=record.queue, _deserializer=arqformat.deserialize)``
gives ``status()`` (queued, deferred, in_progress, complete), ``result()`` (the action's result,
or the exception naming how the job failed: :func:`deserialize`) and, once the job ended,
``info()``. What of arq's format that takes:

* **queues** are arq's sorted sets of arq job ids, scored by run-at time in ms;
* **the lease** is arq's in-progress key, ``arq:in-progress:<arq job id>`` (its value: the
  worker id), so ``status()`` says ``in_progress`` while a job runs;
* **the result** is arq's result key, ``arq:result:<arq job id>``: arq's result object as JSON
  (:func:`encode_result`, never pickle), with actionq's final record of the job added under
  ``"actionq"`` by the settle script, or by the cancel script for a job cancelled while it waited
  (arq ignores the extra key). Once a job has ended this is the only copy of its record
  (:func:`decode_final`).

arq's prefixes are global to the Redis database, not per queue, so an arq job id carries the
namespace: ``<namespace>:<job_id>`` (see :meth:`service.keys.Keys.arq_job_id`). arq's job body
(``arq:job:*``) and try counter (``arq:retry:*``) are not written: the request lives in the job
record and the record counts attempts. The worker side of arq (its ``Worker`` lifecycle) is
:mod:`service.worker.adapter`, the only module that imports arq.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from service.errors import (
    ErrorInfo,
    JobCancelledError,
    JobExpiredError,
    JobSignatureError,
    MalformedJobError,
    PluginActionExecutionError,
    PluginActionTimeoutError,
)
from service.wire import dumps

__all__ = [
    "FUNCTION",
    "IN_PROGRESS_PREFIX",
    "RESULT_PREFIX",
    "FinalRecordError",
    "decode_final",
    "final_fields",
    "deserialize",
    "encode_result",
    "outcome_error",
    "summary",
]

# arq's global key prefixes (``arq.constants``); a unit test keeps them equal to arq's.
IN_PROGRESS_PREFIX = "arq:in-progress:"
RESULT_PREFIX = "arq:result:"
# The one function name arq's results report (``Job.info().function``): actionq jobs are not arq functions.
FUNCTION = "run_action"


_RESULT_KEY = b',"result":'
_NULL_RESULT = _RESULT_KEY + b'null,"error":'


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
    result_json: bytes | None = None,
) -> bytes:
    """arq's result object of an ended job, as JSON (what ``Job.result()`` and ``Job.info()`` read).

    ``result()`` returns ``{"state", "result", "error"}`` (the error without its traceback);
    ``info().kwargs`` is ``{"request": <the job's request>}``: ``request`` must be JSON (it is
    spliced in as it is), and so is ``result_json``, the result already encoded (the worker
    encodes a result once, when it checks it; ``None``: ``result`` is encoded here).
    """
    head = dumps(
        {
            "t": attempt,
            "f": FUNCTION,
            "a": [],
            "et": enqueued_at_ms,
            "s": state == "succeeded",
            "r": {"state": state, "result": result if result_json is None else None, "error": _summary_error(error)},
            "st": started_at_ms,
            "ft": finished_at_ms,
            "q": queue,
            "id": arq_job_id,
        }
    )
    if result_json is not None:  # in place of the null: nothing before it can read like it (our fields)
        at = head.index(_NULL_RESULT) + len(_RESULT_KEY)
        head = head[:at] + result_json + head[at + len(b"null") :]
    return head[:-1] + b',"k":{"request":' + request + b"}}"


def summary(state: str, result: Any, error: ErrorInfo | None) -> bytes:
    """arq's ``r`` of an ended job, as JSON: ``{"state", "result", "error"}`` (the error without its
    traceback). The cancel script splices it into the result of a job cancelled while waiting."""
    return dumps({"state": state, "result": result, "error": _summary_error(error)})


def _summary_error(error: ErrorInfo | None) -> dict[str, Any] | None:
    return None if error is None else error.model_dump(exclude={"traceback"})


def deserialize(raw: bytes) -> dict[str, Any]:
    """arq's ``_deserializer`` for actionq jobs: arq's ``Job.result()`` then returns the action's
    result, or raises the exception the job ended with; ``Job.info()`` works as for arq's own jobs.

    ``Job(keys.arq_job_id(job_id), redis, _queue_name=record.queue, _deserializer=deserialize)``.
    arq's default deserializer is ``pickle.loads``, which cannot read actionq's JSON results (and
    must not: unpickling data from Redis runs whatever code whoever wrote it chose). With a plain
    JSON deserializer ``result()`` returns the summary ``{"state", "result", "error"}`` of a
    succeeded job and raises arq's ``SerializationError`` for any other, since arq raises only an
    exception object; here ``r`` becomes one: :func:`outcome_error`. Data that is not an actionq
    result is returned as JSON decodes it.
    """
    data: dict[str, Any] = json.loads(raw)
    final, outcome = data.get("actionq"), data.get("r")
    if not isinstance(final, dict) or not isinstance(outcome, dict):
        return data
    if data.get("s"):
        data["r"] = outcome.get("result")
        return data
    error = _error_of(final.get("error"), outcome.get("error"))
    job_id = str(data.get("id", "")).partition(":")[2]  # arq ids are <namespace>:<job id>
    data["r"] = outcome_error(job_id, str(outcome.get("state", "")), error)
    return data


def _error_of(recorded: Any, summarized: Any) -> ErrorInfo | None:
    """The final record's error (with its traceback), else the summary's; ``None`` if neither reads."""
    for candidate in (recorded, summarized):
        try:
            if isinstance(candidate, str):
                return ErrorInfo.model_validate_json(candidate)
            if isinstance(candidate, dict):
                return ErrorInfo.model_validate(candidate)
        except ValidationError:
            continue
    return None


def outcome_error(job_id: str, state: str, error: ErrorInfo | None) -> PluginActionExecutionError:
    """The exception a job that ended in ``state`` (not succeeded) stands for, naming its failure:
    :class:`PluginActionTimeoutError`, :class:`JobCancelledError`, the error classes of jobs that
    never ran (expired, malformed, unsigned), else :class:`PluginActionExecutionError`."""
    info = error or ErrorInfo(type="Unknown", message=f"job ended {state or 'without a state'}")
    if state == "timed_out":
        return PluginActionTimeoutError(job_id, info)
    if state == "cancelled":
        return JobCancelledError(job_id, info)
    never_ran = {cls.__name__: cls for cls in (JobExpiredError, MalformedJobError, JobSignatureError)}
    return never_ran.get(info.type, PluginActionExecutionError)(job_id, info)


def decode_final(raw: bytes | str) -> dict[str, Any]:
    """The final record's hash fields (``request`` included, as JSON text) from an arq result.

    Raises :class:`FinalRecordError` when ``raw`` holds no actionq record.
    """
    try:
        final = json.loads(raw)
    except ValueError as exc:
        raise FinalRecordError(f"not an actionq final record: {exc}") from exc
    except RecursionError:
        raise FinalRecordError("not an actionq final record: nested too deeply to read") from None
    return final_fields(final)


def final_fields(final: Any) -> dict[str, Any]:
    """:func:`decode_final` of an arq result already parsed (the terminal state message carries one)."""
    try:
        fields: dict[str, Any] = final["actionq"]
        fields["request"] = json.dumps(final["k"]["request"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FinalRecordError(f"not an actionq final record: {exc}") from exc
    except RecursionError:
        raise FinalRecordError("not an actionq final record: nested too deeply to read") from None
    return fields
