"""The worker's cancellation tokens: one per running job, and pushes for jobs not started yet.

A cancel request is pushed to every worker (``<ns>:ch:cancel``); the one running the job sets its
:class:`~service.plugins.cancellation.CancellationToken` at once. A push for a job this worker
has no token for yet is remembered for a while: the job may have been taken (or handed over)
before the cancel and be about to start here, a gap the durable flag the take reads cannot cover.
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
        self._tokens: dict[str, CancellationToken] = {}
        self._early: dict[str, tuple[str, float]] = {}  # job id -> (reason, when)

    def cancel(self, job_id: str, reason: str) -> bool:
        """Set the token of ``job_id`` if it runs here; True if this worker acted on it."""
        token = self._tokens.get(job_id)
        if token is not None:
            return token.cancel(reason)
        now = time.monotonic()
        if len(self._early) >= _EARLY_CANCELS_MAX:
            self._early = {j: (r, t) for j, (r, t) in self._early.items() if now - t < _EARLY_CANCEL_S}
        if len(self._early) < _EARLY_CANCELS_MAX:
            self._early[job_id] = (reason, now)
        return False

    def token(self, job_id: str, durable_reason: str = "") -> CancellationToken:
        """A new token for a job starting here, already set if a cancel came first.

        ``durable_reason``: the record's cancel flag, read when the job was taken.
        """
        token = self._tokens[job_id] = CancellationToken(asyncio.get_running_loop())
        early = self._early.pop(job_id, None)
        if durable_reason:
            token.cancel(durable_reason)
        elif early is not None and time.monotonic() - early[1] < _EARLY_CANCEL_S:
            token.cancel(early[0])
        return token

    def forget(self, job_id: str) -> None:
        """The job's attempt is over here."""
        self._tokens.pop(job_id, None)
