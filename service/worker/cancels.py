"""The worker's cancellation tokens: one per running job, and pushes for jobs not started yet.

A cancel request is pushed to every worker (``<ns>:ch:cancel``); the one running the job sets its
:class:`~service.plugins.cancellation.CancellationToken` at once. A push for a job this worker
has no token for yet is remembered for a while: the job may have been taken (or handed over)
before the cancel and be about to start here, a gap the durable flag the take reads cannot cover.

A push names the job's *generation* (its ``enqueued_at_ms``: when it was submitted), and applies
only to that generation: a job that reuses the id later (after its record expired, or a
dead-letter replay under the same id) is never cancelled by a push meant for the one before.
"""

from __future__ import annotations

import asyncio
import time

from service.plugins.cancellation import CancellationToken

__all__ = ["Cancels"]

# Cancel pushes for jobs not (yet) running here are kept this long, and this many at most.
_EARLY_CANCEL_S = 30.0
_EARLY_CANCELS_MAX = 10_000


class Cancels:
    """The tokens of the jobs running on one worker."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[int, CancellationToken]] = {}  # job id -> (generation, token)
        self._early: dict[tuple[str, int], tuple[str, float]] = {}  # (job id, generation) -> (reason, when)

    def __len__(self) -> int:
        """How many attempts run here now."""
        return len(self._tokens)

    def cancel(self, job_id: str, reason: str, generation: int) -> bool:
        """Set the token of ``job_id`` (of that ``generation``) if it runs here; True if this worker acted."""
        running = self._tokens.get(job_id)
        if running is not None and running[0] == generation:
            return running[1].cancel(reason)
        now = time.monotonic()
        if len(self._early) >= _EARLY_CANCELS_MAX:
            self._early = {k: (r, t) for k, (r, t) in self._early.items() if now - t < _EARLY_CANCEL_S}
        if len(self._early) < _EARLY_CANCELS_MAX:
            self._early[(job_id, generation)] = (reason, now)
        return False

    def token(self, job_id: str, generation: int, durable_reason: str = "") -> CancellationToken:
        """A new token for a job starting here, already set if a cancel came first.

        ``generation``: the job's ``enqueued_at_ms``; ``durable_reason``: the record's cancel flag,
        read when the job was taken.
        """
        token = CancellationToken(asyncio.get_running_loop())
        self._tokens[job_id] = (generation, token)
        early = self._early.pop((job_id, generation), None)
        if durable_reason:
            token.cancel(durable_reason)
        elif early is not None and time.monotonic() - early[1] < _EARLY_CANCEL_S:
            token.cancel(early[0])
        return token

    def forget(self, job_id: str) -> None:
        """The job's attempt is over here."""
        self._tokens.pop(job_id, None)
