"""Settling jobs: whatever ended, retries or goes back to its queue, written in one script per batch.

When an attempt is over, these change together: the record (state, fields, seq) with its state
message on the job channel; arq's result key (so ``Job.result()`` works); the queue entry
(removed, or moved to the retry time); the lease (arq's in-progress key, deleted); and, for a job
that failed for good, its dead letter. arq does the middle three in one MULTI/EXEC per job.

A job that ended keeps one key, not two: its final record goes into arq's result (one ``SET`` with
the result TTL, under ``"actionq"``) and the record hash is deleted, so the final write costs a read
and a write. :meth:`service.client.store.JobStore.get` reads either form. A job that goes back to
its queue (retry, requeue) keeps its hash, updated in place.

The attempt history stays whole: an attempt its worker cut short (:func:`requeued` after it ran)
gets its entry, state ``interrupted``, and one whose worker stopped answering gets its entry, state
``lost``, from the take that takes the job again (``take.lua``) or from the settlement that ends it
unowned. An ended job's latest progress update takes the status of its end
(:data:`service.models.FINAL_PROGRESS_STATUS`), so its last snapshot never says ``running``.

Every settlement made while a batch is in flight waits for the next one: :class:`Settler` buffers
them (:class:`service.redis.batching.Batcher`) and sends each batch as one call of the settle
script (``service/redis/lua/settle.lua``: one round trip, one ``ZREM`` per queue and one ``DEL``,
however many jobs). Under load that turns four round trips per job into a fraction of one; alone,
a job's settlement goes out at once (no timer, no added wait). The caller awaits its own
settlement, so "settled" means "written".

A record that ended meanwhile is left as it is (seq ``-2``), a missing one (it ended elsewhere, or
was deleted) is not recreated (seq ``-1``); either way the job leaves its queue. A settlement that
names its attempt (``owner``) and finds the record held by another one (this worker's lease lapsed,
say an event loop blocked for longer than the lease, and another worker took the job) changes
nothing (seq ``-3``), dead letter and state message included: the attempt that runs now settles
the job.

Settlements are built here only: :func:`ended`, :func:`retrying` and :func:`requeued`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis

from service.keys import Keys
from service.models import FINAL_PROGRESS_STATUS, JobState, now_ms
from service.redis import scripts
from service.redis.batching import Batcher
from service.redis.cluster import per_slot
from service.redis.connection import broker_errors, while_unreachable
from service.redis.streams import StreamEnd, entry_id
from service.worker.take import TakenJob

__all__ = ["NOT_KEPT", "Settlement", "Settler", "ended", "requeued", "retrying"]

log = structlog.get_logger("actionq.worker")

_BATCH = 500

NOT_KEPT = {
    -1: "the job's live record is gone (it ended elsewhere, or was deleted)",
    -2: "the job already ended (it was cancelled meanwhile)",
    -3: "this attempt's lease lapsed: another attempt holds the job",
}
"""What a negative seq from :meth:`Settler.settle` means: the settlement wrote nothing."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """One job's settlement: its new state and fields, and what happens to its queue entry."""

    job_id: str
    queue: str
    state: JobState
    attempt: int
    fields: dict[str, str | int] = field(default_factory=dict)
    score_ms: int | None = None
    """Back in the queue at this score (retry, requeue); ``None``: the job leaves its queue."""
    arq_result: bytes | None = None
    """The job ended: arq's result (:func:`service.arqformat.encode_result`), which gets the final record."""
    result_ttl_s: int = 0
    """How long the ended job's final record is kept."""
    dead_letter_ttl_s: int = 0
    """Also keep a dead letter (request, attempts, error) this long; 0: none."""
    readable_request: bool = True
    """False when the request could not be read (a malformed job): its dead letter holds none."""
    stream_end: tuple[int, StreamEnd] | None = None
    """A generator's output stream ends: (items written, the terminal marker), kept with the final record."""
    owner: tuple[str, int] | None = None
    """(worker id, attempt) of the attempt settling: if the record is no longer that attempt's
    (its lease lapsed and another worker took the job), nothing is written (seq ``-3``)."""
    unclaimed: bool = False
    """A job settled without being taken (it waited in a queue no worker serves): nothing is written
    (seq ``-3``) if an attempt holds it by then (its record running, with a lease)."""
    interrupted: str = ""
    """A requeued attempt that ran (cut short by its worker): why. Its history entry, state
    ``interrupted``, is written from the record (its worker and start)."""


def ended(
    job: TakenJob,
    state: JobState,
    fields: dict[str, str | int],
    *,
    arq_result: bytes,
    result_ttl_s: int,
    dead_letter_ttl_s: int = 0,
    readable_request: bool = True,
    stream_end: tuple[int, StreamEnd] | None = None,
    worker_id: str | None,
    unclaimed: bool = False,
) -> Settlement:
    """The job ended in ``state``; ``worker_id`` is the attempt's worker (``None``: it never started here;
    ``unclaimed``: nor was it taken)."""
    return Settlement(
        job.job_id,
        job.queue,
        state,
        job.attempt,
        fields,
        arq_result=arq_result,
        result_ttl_s=result_ttl_s,
        dead_letter_ttl_s=dead_letter_ttl_s,
        readable_request=readable_request,
        stream_end=stream_end,
        owner=None if worker_id is None else (worker_id, job.attempt),
        unclaimed=unclaimed,
    )


def retrying(job: TakenJob, fields: dict[str, str | int], *, due_ms: int, worker_id: str) -> Settlement:
    """The attempt failed and the job runs again at ``due_ms``."""
    return Settlement(job.job_id, job.queue, JobState.RETRYING, job.attempt, fields, score_ms=due_ms,
                      owner=(worker_id, job.attempt))  # fmt: skip


def requeued(job: TakenJob, *, worker_id: str, started: bool, due_ms: int | None = None) -> Settlement:
    """Back in its queue, ready now (or at ``due_ms``): cut short by a shutdown (``started``: the
    attempt counts), or handed to a worker that cannot run it, or refused by a concurrency limit
    (the attempt is undone)."""
    attempt = job.attempt if started else job.attempt - 1
    score_ms = now_ms() if due_ms is None else due_ms
    return Settlement(job.job_id, job.queue, JobState.QUEUED, attempt, {"worker": ""}, score_ms=score_ms,
                      owner=(worker_id, job.attempt), interrupted=_INTERRUPTED if started else "")  # fmt: skip


_INTERRUPTED = "stopped by its worker (a shutdown, or a lease it could not renew): back to its queue"


def _never() -> bool:
    return False


_Op = tuple[str, tuple[str, ...], str]
"""One settlement as the script takes it: the job id, its declared keys, the operation's JSON."""


class Settler:
    """Sends settlements in batches: one script call per batch, each caller awaiting its own."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        retry_s: float = 0,
        window_s: float = 0,
        busy: Callable[[], bool] | None = None,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.wait_replicas = wait_replicas
        """Replicas every batch waits for (``WAIT``; the ``wait_replicas`` setting). Fewer in time is
        logged, not raised: the settlement is written, and doing it again would change nothing."""
        self.wait_timeout_s = wait_timeout_s
        self.retry_s = retry_s
        """How long a batch keeps trying while Redis is unreachable (the worker's lease: past it, the
        job is another attempt's anyway). A batch sent twice writes once: the second finds the
        records ended (-1 or -2)."""
        self._script = scripts.register(redis, "settle")
        self._batcher: Batcher[_Op, int] = Batcher(
            self._send, max_batch=_BATCH, name="actionq-settle", same_turn=True, window_s=window_s, busy=busy or _never
        )
        """``window_s``, ``busy``: see :class:`service.redis.batching.Batcher` (``busy``: other jobs still run)."""

    async def settle(self, settlement: Settlement) -> int:
        """Write ``settlement`` (now, or with the next batch); the record's new seq, or -1, -2, -3.

        A negative seq means nothing was written (:data:`NOT_KEPT` says why).
        """
        return await self._batcher.submit(self._encode(settlement))

    def _encode(self, s: Settlement) -> _Op:
        keys = self.keys
        job_id = s.job_id
        declared = (
            keys.job(job_id),
            s.queue,
            keys.arq_in_progress(job_id),
            keys.arq_result(job_id),
            keys.checkpoint(job_id),
            keys.dead_letter(job_id),
            keys.job_stream(job_id),
        )
        flat: list[str] = ["attempt", str(s.attempt)]
        for name, value in s.fields.items():
            flat += [name, str(value)]
        op: dict[str, Any] = {
            "job_id": job_id,
            "arq_id": keys.arq_job_id(job_id),
            "channel": keys.job_channel(job_id),
            "state": s.state.value,
            "attempt": s.attempt,
            "fields": flat,
        }
        if s.score_ms is not None:
            op["score_ms"] = s.score_ms
        if s.owner is not None:
            op["owner"] = {"worker": s.owner[0], "attempt": s.owner[1]}
        if s.unclaimed:
            op["unclaimed"] = True
        if s.arq_result is not None:
            op["result"] = s.arq_result.decode()
            op["result_ttl_ms"] = s.result_ttl_s * 1000
            final = FINAL_PROGRESS_STATUS.get(s.state)
            if final is not None:  # the job's last progress snapshot says how it ended
                op["progress_status"] = final.value
        if s.interrupted:
            op["interrupted"] = {"note": s.interrupted, "at_ms": now_ms()}
        if s.dead_letter_ttl_s:
            op["dead_letter"] = {"ttl_s": s.dead_letter_ttl_s, "at_ms": now_ms(), "request": s.readable_request}
        if s.stream_end is not None:
            written, end = s.stream_end
            fields = [part.decode() for pair in end.fields().items() for part in pair]
            op["stream_end"] = {"id": entry_id(written), "fields": fields, "ttl_s": s.result_ttl_s}
        return job_id, declared, json.dumps(op, separators=(",", ":"))

    async def _send(self, ops: list[_Op]) -> list[int]:
        # On Redis Cluster one call per partition: a script's keys share a slot.
        return await per_slot(ops, lambda op: self.keys.partition(op[0]), self._send_in_slot)

    async def _send_in_slot(self, ops: list[_Op]) -> list[int]:
        keys = [self.keys.dead_letters(ops[0][0])]  # the partition's index (the only one on one Redis)
        for _, declared, _ in ops:
            keys += declared
        args = [op for _, _, op in ops]
        with broker_errors(f"settling {len(ops)} job(s)"):
            seqs, acknowledged = await while_unreachable(
                lambda: scripts.run_replicated(
                    self.redis, self._script, keys, args, replicas=self.wait_replicas, timeout_s=self.wait_timeout_s
                ),
                for_s=self.retry_s,
            )
        if acknowledged < self.wait_replicas:
            log.warning(
                "settlement_not_replicated", jobs=len(ops), replicas=acknowledged, wanted=self.wait_replicas,
                reason="a failover now could lose these outcomes: those jobs would run again",
            )  # fmt: skip
        return [int(seq) for seq in seqs]
