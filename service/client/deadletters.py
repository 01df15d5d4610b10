"""The dead-letter store: jobs whose attempts ran out, kept to be understood and replayed.

A dead letter holds everything needed: the original request (plugin, action, params, options),
the queue, every attempt (worker, times, outcome, error) and the final error. Letters expire
after ``dead_letter_ttl_s``. Replay submits the same request as a fresh attempt series — under
the **same job id** by default (the old record is replaced), or under a new id on request.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from service.client.handle import JobHandle
from service.errors import (
    DeadLetterNotFoundError,
    ErrorInfo,
    RecordUnreadableError,
    SubmissionError,
    describe_validation,
)
from service.keys import Keys
from service.models import AttemptInfo, JobRequest, JobState, now_ms
from service.redis import scripts
from service.redis.cluster import is_cluster, per_slot
from service.redis.connection import broker_errors

__all__ = ["DeadLetter", "DeadLetterStore", "Submit"]

log = structlog.get_logger("actionq.deadletters")

Submit = Callable[[JobRequest], Awaitable[JobHandle]]
"""How a replay submits (:meth:`service.client.client.JobClient.submit_request`)."""


class DeadLetter(BaseModel):
    """A job that failed for good, with its history (written by the settle script with the final record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    request: JobRequest | None = Field(
        description="What was asked; None when the job's data was malformed (its error says what was wrong)."
    )
    queue: str
    state: JobState = Field(description="failed or timed_out")
    error: ErrorInfo | None
    attempts: list[AttemptInfo]
    dead_at_ms: int = Field(default_factory=now_ms)


class DeadLetterStore:
    """Dead letters of one namespace: add, list, get, replay, purge."""

    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int, submit: Submit | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._submit = submit
        self._forget = scripts.register(redis, "forget")

    async def list(self, limit: int = 100) -> list[DeadLetter]:
        """The newest ``limit`` dead letters, newest first (expired ones are dropped from the index).

        On Redis Cluster each partition has its index: the newest of each are merged.
        """
        cutoff = now_ms() - self.ttl_s * 1000
        newest: list[tuple[float, str]] = []
        with broker_errors("listing dead letters"):
            for index in self.keys.dead_letter_indexes():
                await self.redis.zremrangebyscore(index, "-inf", cutoff)
                found = await self.redis.zrevrange(index, 0, limit - 1, withscores=True)
                newest += [(score, member.decode(errors="replace")) for member, score in found]
            newest.sort(reverse=True)
            names = [name for _, name in newest[:limit]]
            raws = await per_slot(names, self.keys.partition, self._read_many)
        letters = []
        for name, raw in zip(names, raws, strict=True):
            if raw:
                try:
                    letters.append(_letter(name, raw))
                except RecordUnreadableError as exc:  # skipped and reported; the others still list
                    log.warning("dead_letter_unreadable", job_id=name[:200], error=exc.problem)
        return letters

    async def _read_many(self, job_ids: builtins.list[str]) -> builtins.list[bytes | None]:
        raws: builtins.list[bytes | None] = await self.redis.mget([self.keys.dead_letter(j) for j in job_ids])
        return raws

    async def get(self, job_id: str) -> DeadLetter:
        """The dead letter of ``job_id``; :class:`DeadLetterNotFoundError` if there is none."""
        return _letter(job_id, await self._raw(job_id))

    async def _raw(self, job_id: str) -> bytes:
        with broker_errors(f"reading the dead letter of {job_id}"):
            raw: bytes | None = await self.redis.get(self.keys.dead_letter(job_id))
        if raw is None:
            raise DeadLetterNotFoundError(job_id)
        return raw

    async def _remove_unless_replaced(self, job_id: str, raw: bytes) -> None:
        """Remove the letter of ``job_id`` if it is still ``raw`` (``service/redis/lua/forget.lua``).

        A replayed job can fail again, and write a new letter, before the replay returns: that one stays.
        """
        keys = [self.keys.dead_letter(job_id), self.keys.dead_letters(job_id)]
        with broker_errors(f"removing the dead letter of {job_id}"):
            await self._forget(keys=keys, args=[raw, job_id])

    async def purge(self, job_ids: builtins.list[str] | None = None) -> int:
        """Delete the given dead letters (all of them when ``job_ids`` is None); returns how many."""
        with broker_errors("purging dead letters"):
            if job_ids is None:
                job_ids = [
                    i.decode()
                    for index in self.keys.dead_letter_indexes()
                    for i in await self.redis.zrange(index, 0, -1)
                ]
            if not job_ids:
                return 0
            deleted = await per_slot(job_ids, self.keys.partition, self._purge_in_slot)
        return sum(deleted)

    async def _purge_in_slot(self, job_ids: builtins.list[str]) -> builtins.list[int]:
        """Delete letters of one slot and their index entries: 1 for each letter deleted, else 0.

        In one transaction on one Redis; Redis Cluster has none (a letter whose entry was left
        behind by a crash in between is skipped by :meth:`list`).
        """
        async with self.redis.pipeline(transaction=not is_cluster(self.redis)) as pipe:
            for job_id in job_ids:
                pipe.delete(self.keys.dead_letter(job_id))
            pipe.zrem(self.keys.dead_letters(job_ids[0]), *job_ids)
            replies = await pipe.execute()
        return [int(n) for n in replies[:-1]]

    async def replay(self, job_id: str, *, new_id: bool = False) -> JobHandle:
        """Submit the dead job again as a fresh attempt series; the letter is removed.

        Same job id by default: the old (failed) record, and arq's result that holds it, are
        replaced. ``new_id=True`` leaves the old record as it is and gives the replay a new random id.
        """
        if self._submit is None:
            raise RuntimeError("replay needs a store that can submit (client.dead)")
        raw = await self._raw(job_id)
        letter = _letter(job_id, raw)
        if letter.request is None:
            raise SubmissionError(f"the dead letter of {job_id} holds no request to replay (its data was malformed)")
        options = letter.request.options.model_copy(update={"job_id": None if new_id else job_id})
        request = letter.request.model_copy(update={"options": options})
        if not new_id:
            with broker_errors(f"replacing the record of {job_id}"):
                await self.redis.delete(self.keys.job(job_id), self.keys.arq_result(job_id))
        handle = await self._submit(request)
        await self._remove_unless_replaced(job_id, raw)
        return handle


def _letter(job_id: str, raw: bytes) -> DeadLetter:
    try:
        return DeadLetter.model_validate_json(raw)
    except ValidationError as exc:
        raise RecordUnreadableError(job_id, f"dead letter: {describe_validation(exc)}") from exc
