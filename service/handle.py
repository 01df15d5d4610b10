"""A handle to one submitted job: its state, its record and its result."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from service.errors import (
    JobCancelledError,
    JobNotFoundError,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    ResultTimeoutError,
)
from service.models import ErrorInfo, JobRecord, JobState

if TYPE_CHECKING:
    from service.client import JobClient

__all__ = ["JobHandle", "outcome_of"]

# While waiting, the record is re-read at least this often even without a message: a safety
# net for a pub/sub message lost to a reconnect, not the way results normally arrive.
_RECHECK_S = 5.0


class JobHandle:
    """Follows one job. ``created`` is False when the submit found the job id already taken."""

    def __init__(self, client: JobClient, job_id: str, *, created: bool) -> None:
        self.client = client
        self.job_id = job_id
        self.created = created

    def __repr__(self) -> str:
        return f"JobHandle(job_id={self.job_id!r}, created={self.created})"

    async def record(self) -> JobRecord:
        """The job's current record; :class:`JobNotFoundError` if it has none."""
        record = await self.client.store.get(self.job_id)
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
            record = await self.record()
            while not record.is_terminal:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeoutError(self.job_id, timeout or 0.0, record.state.value)
                wait_s = _RECHECK_S if remaining is None else min(remaining, _RECHECK_S)
                message = await sub.get(wait_s)
                if message is None or _is_terminal_message(message):
                    record = await self.record()
        return record

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result, or raise what it ended with.

        A failed job raises :class:`PluginActionExecutionError` (``.error`` says what happened
        on the worker), a timed-out one :class:`PluginActionTimeoutError`, a cancelled one
        :class:`JobCancelledError`; waiting longer than ``timeout`` raises
        :class:`ResultTimeoutError` (the job itself keeps going).
        """
        return outcome_of(await self.wait(timeout))


def _is_terminal_message(message: bytes) -> bool:
    try:
        state = json.loads(message).get("state")
    except (ValueError, AttributeError):
        return True  # unreadable: re-read the record rather than guess
    return state is not None and JobState(state).is_terminal


def outcome_of(record: JobRecord) -> Any:
    """The result of a finished job, or the exception its outcome stands for."""
    if record.state is JobState.SUCCEEDED:
        return record.result
    error = record.error or ErrorInfo(type="Unknown", message=f"job ended {record.state.value}")
    if record.state is JobState.TIMED_OUT:
        raise PluginActionTimeoutError(record.job_id, error)
    if record.state is JobState.CANCELLED:
        raise JobCancelledError(record.job_id, error)
    raise PluginActionExecutionError(record.job_id, error)
