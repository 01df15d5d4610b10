"""``actionq worker --processes N``: a supervisor running N worker processes.

One asyncio process uses one core, so a pool runs N worker processes (each with its own
``--concurrency``). The supervisor restarts a worker that crashes (with a growing pause if it keeps
dying at once, so a broken deployment does not spin), and on SIGTERM or SIGINT forwards SIGTERM to
every worker — each drains: it stops taking jobs and gives running ones ``shutdown_grace_s`` —
then exits when they have. Workers run in their own session (a terminal's Ctrl-C reaches only the
supervisor, which decides) and stop by themselves if the supervisor disappears
(:mod:`service.processes.parent`).

Exit code 0 is how a member says it ended on purpose: a remote ``stop`` or ``drain``, or a SIGTERM
sent to it, ends a worker with 0 and nothing else does (an error exits non-zero, a crash dies by a
signal). The supervisor does not restart such a member, and once every member has ended that way
it exits 0 itself: ``actionq stop --host H`` stops the pools on H. This is the rule of systemd's
``Restart=on-failure`` and Docker's ``on-failure`` applied to the members, and it keeps the exit
code of a worker run alone meaningful to those supervisors (0 after a remote stop: not restarted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

import structlog

from service.processes.parent import owned_env
from service.settings import POOL_INDEX_ENV, SUPERVISOR_ENV

__all__ = ["SUPERVISOR_ENV", "WorkerPool"]

log = structlog.get_logger("actionq.pool")

# A worker that lived shorter than this is "dying at once": its restarts back off.
_HEALTHY_AFTER_S = 10.0
_MAX_BACKOFF_S = 30.0
_TICK_S = 0.2


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float = 0.0
    restarts: int = field(default=0)
    retired: bool = False
    """The member ended on purpose (exit code 0): the slot stays empty."""


class WorkerPool:
    """Runs and supervises ``processes`` copies of a worker command."""

    def __init__(self, command: Sequence[str], processes: int, *, env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.env = owned_env(env if env is not None else os.environ)
        self.slots = [_Slot(i) for i in range(processes)]
        self._stopping = False

    def run(self) -> int:
        """Supervise until a stop signal, then drain, or until every member ended on purpose.

        Returns the exit code: 0 on a clean stop.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self._spawn(slot)
            log.info("pool_started", processes=len(self.slots), pids=[s.proc.pid for s in self.slots if s.proc])
            while not self._stopping:
                self._tick()
                if all(slot.retired for slot in self.slots):
                    log.info("pool_stopped", reason="every member was stopped or drained on request")
                    return 0
                time.sleep(_TICK_S)
            return self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("pool_stopping", signal=signal.Signals(signum).name)
        self._stopping = True

    def _spawn(self, slot: _Slot) -> None:
        # Its index in the pool, kept across restarts: a member's metrics port is metrics_port + index.
        env = {**self.env, POOL_INDEX_ENV: str(slot.index)}
        slot.proc = subprocess.Popen(self.command, env=env, start_new_session=True)
        slot.started_at = time.monotonic()

    def _tick(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                self._ended(slot, slot.proc, now)
            if slot.proc is None and not slot.retired and now >= slot.restart_at and not self._stopping:
                self._spawn(slot)
                slot.restarts += 1
                log.info("pool_worker_restarted", slot=slot.index, pid=slot.proc.pid if slot.proc else None)

    def _ended(self, slot: _Slot, proc: subprocess.Popen[bytes], now: float) -> None:
        """A member exited: retire its slot if it ended on purpose (0), else schedule its restart."""
        slot.proc = None
        if proc.returncode == 0:
            log.info("pool_worker_stopped", slot=slot.index, pid=proc.pid, reason="ended on purpose (exit code 0)")
            slot.retired = True
            return
        lived = now - slot.started_at
        slot.backoff_s = 0.0 if lived >= _HEALTHY_AFTER_S else min(max(slot.backoff_s * 2, 1.0), _MAX_BACKOFF_S)
        slot.restart_at = now + slot.backoff_s
        log.warning("pool_worker_died", slot=slot.index, pid=proc.pid, code=proc.returncode,
                    restart_in_s=slot.backoff_s)  # fmt: skip

    def _drain(self) -> int:
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait() for proc in running]
        log.info("pool_stopped", exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1
