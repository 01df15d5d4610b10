"""A handle to one submitted job: its state, its record and its result."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Protocol

from redis.asyncio import Redis

from service import arqformat
from service.client.store import JobStore, parse_final
from service.client.streams import follow
from service.errors import (
    JobNotFoundError,
    PluginActionExecutionError,
    RecordUnreadableError,
    ResultTimeoutError,
)
from service.keys import Keys
from service.models import CancelOutcome, ErrorInfo, JobRecord, JobState, ProgressSnapshot, ProgressUpdate, now_ms
from service.redis.connection import while_unreachable
from service.redis.pubsub import PubSubMultiplexer
from service.redis.streams import StreamEnd
from service.settings import Settings

__all__ = ["JobHandle", "error_for", "outcome_of"]

# While waiting, the record is re-read at least this often even without a message: a safety
# net for a pub/sub message lost to a reconnect, not the way results normally arrive.
_RECHECK_S = 5.0


class _Client(Protocol):
    """What a handle uses of its :class:`~service.client.client.JobClient`."""

    redis: Redis
    keys: Keys
    settings: Settings
    store: JobStore

    @property
    def pubsub(self) -> PubSubMultiplexer: ...


class JobHandle:
    """Follows one job. ``created`` is False when the submit found the job id already taken."""

    def __init__(self, client: _Client, job_id: str, *, created: bool) -> None:
        self.client = client
        self.job_id = job_id
        self.created = created

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r}, created={self.created})"

    async def record(self, *, watch: bool = False) -> JobRecord:
        """The job's current record; :class:`JobNotFoundError` if it has none.

        ``watch``: from now on the job's changes are published on its channel (its followers,
        :meth:`wait` and :meth:`progress`, subscribe first, then read with ``watch``).
        """
        record = await while_unreachable(
            lambda: self.client.store.get(self.job_id, watch=watch), for_s=self.client.settings.reconnect_s
        )
        if record is None:
            raise JobNotFoundError(self.job_id)
        return record

    async def state(self) -> JobState:
        """The job's current state."""
        return (await self.record()).state

    async def wait(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job is in a terminal state and return its record (whatever the outcome).

        Subscribes to the job's channel first, then reads the record, then waits for state
        messages, so a transition between the read and the wait is never missed.
        Raises :class:`ResultTimeoutError` after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        channel = self.client.keys.job_channel(self.job_id)
        async with self.client.pubsub.subscribe(channel) as sub:
            record = await self.record(watch=True)
            while not record.is_terminal:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeoutError(self.job_id, timeout or 0.0, record.state.value)
                wait_s = _RECHECK_S if remaining is None else min(remaining, _RECHECK_S)
                message = await sub.get(wait_s)
                if message is None:
                    record = await self.record()
                elif (end := _terminal_message(message)) is not None:
                    record = self._final_of(end) or await self.record()
        return record

    def _final_of(self, end: dict[str, Any]) -> JobRecord | None:
        """The final record a terminal message carries (unless it was large), or ``None``: then it is
        read back, as it is when the one carried cannot be read (a message not written by actionq)."""
        final = end.get("final")
        if not isinstance(final, dict):
            return None
        try:
            record = parse_final(self.job_id, final)
        except RecordUnreadableError:
            return None
        return record if record.is_terminal else None

    async def progress(self) -> AsyncIterator[ProgressSnapshot]:
        """Follow the job: its state and latest progress, then every change, until it ends.

        Subscribes first, then reads the stored snapshot, then follows the job channel,
        deduplicating by the per-job sequence number: a late subscriber gets the current state
        first, one who arrives after the end gets the final state and stops, and nobody sees an
        update twice or out of order. The last snapshot has the terminal state.
        """
        channel = self.client.keys.job_channel(self.job_id)
        async with self.client.pubsub.subscribe(channel) as sub:
            snap = ProgressSnapshot.of(await self.record(watch=True))
            yield snap
            while not snap.state.is_terminal:
                message = await sub.get(_RECHECK_S)
                data = _parse(message) if message is not None else None
                seq = data.get("seq", 0) if data is not None else 0
                if data is not None and seq <= snap.seq:
                    continue  # already seen in the stored snapshot
                if data is None or seq != snap.seq + 1:
                    # A quiet spell, an unreadable message or a gap (lost in a reconnect): re-read.
                    fresh = ProgressSnapshot.of(await self.record())
                    if fresh.seq <= snap.seq:
                        continue
                    snap = fresh
                else:
                    snap = _apply(snap, data)
                yield snap

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result, or raise what it ended with.

        A failed job raises :class:`PluginActionExecutionError` (``.error`` says what happened
        on the worker), a timed-out one :class:`PluginActionTimeoutError`, a cancelled one
        :class:`JobCancelledError`; waiting longer than ``timeout`` raises
        :class:`ResultTimeoutError` (the job itself keeps going).
        """
        return outcome_of(await self.wait(timeout))

    async def cancel(self, reason: str = "cancelled by request", *, timeout: float = 30.0) -> CancelOutcome:
        """Cancel the job, whatever its state, and say what happened.

        A waiting job (queued, deferred, or waiting to retry) is cancelled at once and never
        starts: ``cancelled_queued``. A running job gets a durable flag and a push to its worker,
        which sets the job's token and interrupts the action (a coroutine or a generator at once, a
        thread once it returns or its grace period is over: see the reliability docs); this
        waits up to ``timeout`` seconds for the end: ``cancelled_running``, or
        ``already_finished`` if it finished first (cancel racing completion), or
        ``cancel_requested`` if it has not ended yet. A job that had ended is left alone:
        ``already_finished``. A cancelled job is never retried.
        """
        # One round trip: the script itself decides, flags, pushes (and picks the result TTL).
        ttl_s = self.client.settings.kept_for_s(JobState.CANCELLED)
        what, _ = await self.client.store.cancel(self.job_id, reason=reason, now_ms=now_ms(), ttl_s=ttl_s)
        if what == "missing":
            raise JobNotFoundError(self.job_id)
        if what == "finished":
            return CancelOutcome.ALREADY_FINISHED
        if what == "cancelled":
            return CancelOutcome.CANCELLED_QUEUED
        try:
            record = await self.wait(timeout)  # subscribes, then reads: the end cannot be missed
        except ResultTimeoutError:
            return CancelOutcome.CANCEL_REQUESTED
        if record.state is JobState.CANCELLED:
            return CancelOutcome.CANCELLED_RUNNING
        return CancelOutcome.ALREADY_FINISHED

    async def stream(self, start: int = 0) -> AsyncGenerator[Any, None]:
        """The items a generator action yields, from index ``start`` on, live until it ends.

        Reads the job's output stream (``Keys.job_stream``): items already produced first (so
        ``start`` resumes where an earlier reader stopped), then each new item as it is written,
        waiting while the job is still queued. When the terminal marker arrives: a successful run
        just stops; a failed, timed-out or cancelled one raises what :meth:`result` would
        (:class:`PluginActionExecutionError`, :class:`PluginActionTimeoutError`,
        :class:`JobCancelledError`) after the items produced before the error.

        Raises :class:`StreamUnavailableError` when the job ended without a stream (not a
        generator action, or the stream expired), and :class:`StreamTrimmedError` when this reader
        fell more than the stream's cap behind (resume from its ``first_available_index`` to
        accept the loss). A re-run of the job (a retry, or a worker lost mid-job) restarts the stream.
        """
        key = self.client.keys.job_stream(self.job_id)
        reading = follow(self.client.redis, key, self.job_id, start, self._finished, self.client.settings.reconnect_s)
        async with aclosing(reading) as entries:
            async for entry in entries:
                if isinstance(entry, StreamEnd):
                    if entry.state is not JobState.SUCCEEDED:
                        raise error_for(self.job_id, entry.state, entry.error)
                    return
                yield entry

    async def _finished(self) -> bool:
        return (await self.record()).is_terminal


def _parse(message: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(message)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("seq"), int) else None


def _apply(snap: ProgressSnapshot, data: dict[str, Any]) -> ProgressSnapshot:
    """The snapshot after one job-channel message (``state`` or ``progress``)."""
    update: dict[str, Any] = {"seq": data["seq"]}
    if data.get("type") == "state":
        update["state"] = JobState(data["state"])
    elif data.get("type") == "progress":
        update["progress"] = ProgressUpdate.model_validate(data["progress"])
    return snap.model_copy(update=update)


def _terminal_message(message: bytes) -> dict[str, Any] | None:
    """The message, parsed, if it says the job ended (an unreadable one too: re-read rather than guess)."""
    try:
        data = json.loads(message)
        state = data.get("state")
        ended = state is not None and JobState(state).is_terminal
    except (ValueError, AttributeError):
        return {}
    return data if ended else None


def outcome_of(record: JobRecord) -> Any:
    """The result of a finished job, or the exception its outcome stands for."""
    if record.state is JobState.SUCCEEDED:
        return record.result
    raise error_for(record.job_id, record.state, record.error)


def error_for(job_id: str, state: JobState, error: ErrorInfo | None) -> PluginActionExecutionError:
    """The exception a job that ended in ``state`` (not succeeded) stands for (as arq's reader gets it)."""
    return arqformat.outcome_error(job_id, state.value, error)
