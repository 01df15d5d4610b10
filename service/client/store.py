"""The producer's side of job records: create them with their queue entry, read them, cancel them.

A live job's record is a hash (``Keys.job``) so that a transition touches only its own fields;
once the job ended its final record is kept in arq's result (:mod:`service.arqformat`). Every
change increments ``seq`` and, if someone follows the job, is published on its channel in the
same script, so a subscriber that reads the record can tell exactly which messages it has seen.
The scripts are ``submit``, ``read`` and ``cancel`` (:mod:`service.redis.scripts`); a worker
starts attempts in its take script (:mod:`service.worker.take`) and ends them in its settle
script (:mod:`service.worker.settle`).

Job channel messages (JSON)::

    {"type": "state", "job_id": "...", "state": "running", "attempt": 1, "seq": 2}
    {"type": "progress", "job_id": "...", "progress": {ProgressUpdate}, "seq": 3}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from service import arqformat
from service.errors import (
    ActionQError,
    BrokerError,
    ErrorInfo,
    RecordUnreadableError,
    ReplicationTimeoutError,
    describe_validation,
)
from service.keys import Keys
from service.models import FINAL_PROGRESS_STATUS, AttemptInfo, JobRecord, JobRequest, JobState, ProgressUpdate
from service.redis import scripts
from service.redis.batching import Batcher
from service.redis.cluster import per_slot
from service.redis.connection import broker_errors
from service.signing import Signer
from service.wire import WireError, loads

__all__ = ["CreateResult", "JobStore", "parse_final", "parse_record"]

_BATCH = 200  # submits per call at most

# Hash fields that are not JobRecord fields: whether someone follows the job, the request's signature;
# a job_id field (never written by actionq) must not stand for the id the record is read under.
_NOT_RECORD_FIELDS = frozenset({"watched", "sig", "job_id"})

_INT_FIELDS = (
    "attempt",
    "enqueued_at_ms",
    "scheduled_at_ms",
    "expires_at_ms",
    "started_at_ms",
    "finished_at_ms",
    "seq",
)


@dataclass(frozen=True, slots=True)
class CreateResult:
    """Outcome of :meth:`JobStore.create`: created, or the existing job's request and state."""

    created: bool
    existing_request: JobRequest | None = None
    existing_state: JobState | None = None


@dataclass(frozen=True, slots=True)
class NewJob:
    """One submit's keys and arguments for the submit script."""

    job_id: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]


class JobStore:
    """Creates, reads and cancels job records for one namespace."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        signer: Signer | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.wait_replicas = wait_replicas
        """Replicas every submit waits for (``WAIT``; the ``wait_replicas`` setting)."""
        self.wait_timeout_s = wait_timeout_s
        self.signer = signer or Signer([])
        self._submit = scripts.register(redis, "submit")
        self._creator: Batcher[NewJob, list[Any]] = Batcher(self._create_batch, max_batch=_BATCH, name="actionq-submit")
        self._cancel = scripts.register(redis, "cancel")
        self._read = scripts.register(redis, "read")

    def new_job(
        self,
        job_id: str,
        request_json: str,
        *,
        queue: str,
        now_ms: int,
        score_ms: int,
        expires_at_ms: int | None = None,
        fresh_id: bool = False,
        lease_ms: int = 3000,
        watch: bool = False,
        signature: str = "",
    ) -> NewJob:
        """A job to write with :meth:`create` or :meth:`create_many` (nothing is sent yet).

        ``expires_at_ms``: the queue-wait limit; a worker that takes the job later fails it instead.
        ``fresh_id``: the id was just generated (128 random bits), so it cannot be taken; not checked.
        ``lease_ms``: the claim of a job handed straight to an idle worker (the workers' ``lease_s``).
        ``watch``: the job is followed from the start (its changes are published; see :meth:`get`).
        ``signature``: the request's signature (:mod:`service.signing`), kept with the record.
        """
        keys = self.keys
        queue = keys.queue_of(queue, job_id)  # on Redis Cluster, the job's partition's set
        return NewJob(
            job_id,
            keys=(
                keys.job(job_id),
                queue,
                keys.idle_workers(queue),
                keys.arq_in_progress(job_id),
                keys.arq_result(job_id),
            ),
            args=(
                request_json,
                now_ms,
                score_ms,
                keys.arq_job_id(job_id),
                "0" if fresh_id else "1",
                "1" if watch else "0",
                job_id,
                "" if expires_at_ms is None else expires_at_ms,
                lease_ms,
                signature,
            ),
        )

    async def create(self, job_id: str, request_json: str, **fields: Any) -> CreateResult:
        """Write the record and the queue entry atomically, unless the job id is taken (``fields``:
        those of :meth:`new_job`).

        Concurrent calls share round trips: those made while one is in flight go out together next.
        """
        return await self.write(self.new_job(job_id, request_json, **fields))

    async def write(self, job: NewJob) -> CreateResult:
        """:meth:`create` for a job :meth:`new_job` built."""
        return _created(job.job_id, await self._creator.submit(job))

    async def create_many(self, jobs: list[NewJob]) -> list[CreateResult | ActionQError]:
        """:meth:`create` for each of ``jobs``, in as few round trips as the batch size allows, with
        no task per job; each gets its result, or the error of its round trip, in order."""
        replies = await self._creator.submit_many(jobs)
        results: list[CreateResult | ActionQError] = []
        for job, reply in zip(jobs, replies, strict=True):
            if isinstance(reply, ActionQError):
                results.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                try:
                    results.append(_created(job.job_id, reply))
                except ActionQError as exc:
                    results.append(exc)
        return results

    async def _create_batch(self, jobs: list[NewJob]) -> list[list[Any]]:
        # On Redis Cluster one call per partition: a script's keys share a slot.
        return await per_slot(jobs, lambda job: self.keys.partition(job.job_id), self._create_in_slot)

    async def _create_in_slot(self, jobs: list[NewJob]) -> list[list[Any]]:
        keys: list[str] = []
        names = self.keys
        tag = names.job_tag(jobs[0].job_id)  # on Redis Cluster the partition's sharded channels
        args: list[Any] = [names.wake_channel(tag), names.worker_channel_prefix(tag), names.job_channel_prefix(tag)]
        for job in jobs:
            keys += job.keys
            args += job.args
        doing = f"submitting job {jobs[0].job_id}" if len(jobs) == 1 else f"submitting {len(jobs)} jobs"
        with broker_errors(doing):
            replies, acknowledged = await scripts.run_replicated(
                self.redis, self._submit, keys, args, replicas=self.wait_replicas, timeout_s=self.wait_timeout_s
            )
        if acknowledged < self.wait_replicas:
            raise ReplicationTimeoutError(doing, acknowledged, self.wait_replicas, self.wait_timeout_s)
        return list(replies)

    async def get(self, job_id: str, *, watch: bool = False) -> JobRecord | None:
        """The record of ``job_id`` (live or final), or ``None`` if there is none (never existed or expired).

        ``watch``: mark the job as followed, so that its changes are published on its channel
        from now on (subscribe to the channel first, then read with ``watch=True``).
        """
        with broker_errors(f"reading job {job_id}"):
            fields, final = await self._read(
                keys=[self.keys.job(job_id), self.keys.arq_result(job_id)], args=["1" if watch else "0"]
            )
        if fields:
            return parse_record(job_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        return parse_final(job_id, final) if final else None

    async def cancel(self, job_id: str, *, reason: str, now_ms: int, ttl_s: int) -> tuple[str, str]:
        """Cancel ``job_id``: returns (what happened, the state it was in).

        What happened is ``cancelled`` (it was waiting: it will never run; it ended as any job
        ends, its final record in arq's result), ``running`` (the running worker was told; the
        outcome follows), ``finished`` (nothing changed) or ``missing`` (no record). A running job
        is cancelled in one round trip; a waiting one in two, since the script must be told its
        queue (it declares every key it touches).
        """
        keys = self.keys
        error = ErrorInfo(type="JobCancelledError", message=f"cancelled before it started: {reason}")
        args: list[str | int | bytes] = [reason, now_ms, ttl_s, keys.arq_job_id(job_id), error.model_dump_json()]
        signature = self.signer.sign("cancel", job_id, reason, str(now_ms))
        args += [keys.job_channel(job_id), keys.cancel_channel(), job_id, now_ms, signature]
        cancelled = JobState.CANCELLED
        args += [
            arqformat.summary(cancelled.value, None, error),
            arqformat.FUNCTION,
            FINAL_PROGRESS_STATUS[cancelled].value,
        ]
        declared = [keys.job(job_id), keys.arq_result(job_id), keys.checkpoint(job_id), keys.job_stream(job_id)]
        for _ in range(_CANCEL_TRIES):
            with broker_errors(f"cancelling job {job_id}"):
                raw_what, raw_state = await self._cancel(keys=declared, args=args)
            what, state = raw_what.decode(), raw_state.decode()
            if what != "queue":
                return what, state
            declared = [*declared[:4], state]  # it waits in that queue: declare it and go again
        raise BrokerError(f"cancelling job {job_id}: its queue kept changing under the cancel")


# A waiting job's cancel learns its queue from the first call; a replay under the same id that
# moves it meanwhile costs one more.
_CANCEL_TRIES = 3


def _created(job_id: str, reply: list[Any]) -> CreateResult:
    """The submit script's reply for one job: created, or the live or ended job that has the id."""
    if int(reply[0]) == 1:
        return CreateResult(True)
    if reply[3]:  # the job ended: its final record is in arq's result
        final = parse_final(job_id, reply[3])
        return CreateResult(False, final.request, final.state)
    try:
        existing = JobRequest.model_validate_json(reply[1]) if reply[1] else None
        state = JobState(reply[2].decode()) if reply[2] else None
    except ValidationError as exc:
        raise RecordUnreadableError(job_id, f"request: {describe_validation(exc)}") from exc
    except ValueError as exc:
        raise RecordUnreadableError(job_id, f"state: {exc}") from exc
    return CreateResult(False, existing, state)


def parse_record(job_id: str, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> JobRecord:
    """Build a :class:`JobRecord` from the hash fields Redis returned.

    Raises :class:`RecordUnreadableError` naming the field when the record is malformed.
    """
    data: dict[str, Any] = {"job_id": job_id}
    attempts = []
    for key, raw_value in raw.items():
        name = key.decode(errors="replace") if isinstance(key, bytes) else key
        if name in _NOT_RECORD_FIELDS:
            continue
        try:
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            if name.startswith("attempt:"):
                attempts.append(AttemptInfo.model_validate_json(value))
            else:
                data[name] = _field(name, value)
        except ValidationError as exc:
            raise RecordUnreadableError(job_id, f"{name}: {describe_validation(exc)}") from exc
        except (ValueError, TypeError) as exc:  # not text, not an integer, not JSON
            raise RecordUnreadableError(job_id, f"{name}: {exc}") from exc
        except RecursionError:
            raise RecordUnreadableError(job_id, f"{name}: nested too deeply to read") from None
    data["attempts"] = sorted(attempts, key=lambda a: a.attempt)
    try:
        return JobRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordUnreadableError(job_id, describe_validation(exc, unknown="unknown field")) from exc


def _field(name: str, value: str) -> Any:
    if name in _INT_FIELDS:
        return int(value)
    if name == "queue":  # on Redis Cluster its partition's sorted set: the record names the queue
        return Keys.logical_queue_name(value)
    if name == "request":
        return JobRequest.model_validate_json(value)
    if name == "result":
        return _json_or_raw(value)
    if name == "error":
        return ErrorInfo.model_validate_json(value)
    if name == "progress":
        return ProgressUpdate.model_validate_json(value)
    return value


def parse_final(job_id: str, raw: bytes | dict[str, Any]) -> JobRecord:
    """The final record of an ended job, from arq's result (written by the settle script): its
    bytes, or the value already parsed (the terminal state message carries it as ``final``)."""
    try:
        fields = arqformat.final_fields(raw) if isinstance(raw, dict) else arqformat.decode_final(raw)
    except arqformat.FinalRecordError as exc:
        raise RecordUnreadableError(job_id, str(exc)) from exc
    return parse_record(job_id, fields)


def _json_or_raw(value: str) -> Any:
    try:
        return loads(value)
    except WireError:
        return value
