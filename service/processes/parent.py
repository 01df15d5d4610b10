"""Workers that end with the process that started them: a pool's members, ``actionq up``'s worker.

A pool supervisor and ``actionq up`` start their workers in a session of their own (a terminal's
Ctrl-C reaches only the parent, which decides how to stop them), so nothing stops such a worker
when its parent dies without stopping it first (SIGKILL, a crash, an exception in its shutdown
path): it would keep running, reconnecting to a Redis that may have gone with its parent. So the
parent passes its pid in :data:`PARENT_ENV` (:func:`owned_env`) and the worker watches it:

* on Linux the worker asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``,
  set by the worker itself at start: setting it between fork and exec would need ``preexec_fn``,
  unsafe in a parent with threads), then checks once that the parent did not die before that;
* everywhere, the running worker also polls :func:`os.getppid` (``service.worker.runtime``),
  the fallback where there is no ``prctl``.

SIGTERM is the worker's own graceful stop: it drains (running jobs get ``shutdown_grace_s``).
A worker started by hand has no :data:`PARENT_ENV` and ignores its parent: it must not end when
the shell that started it does. ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the
worker ends; both parents start their workers from their main thread, which lives as long as they.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

import structlog

from service.settings import SUPERVISOR_ENV

__all__ = ["PARENT_ENV", "die_with_parent", "expected_parent", "owned_env"]

PARENT_ENV = SUPERVISOR_ENV
"""The environment variable naming the pid of the process that owns a worker (not a setting)."""

log = structlog.get_logger("actionq.worker")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def owned_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a worker that must end with this process: with :data:`PARENT_ENV` set to our pid."""
    return {**env, PARENT_ENV: str(os.getpid())}


def expected_parent() -> int | None:
    """The pid this worker's parent had when it started it, or None for a worker started by hand."""
    value = os.environ.get(PARENT_ENV, "")
    return int(value) if value.isdigit() else None


def die_with_parent() -> bool:
    """Have the kernel send SIGTERM when the owning parent dies (Linux); False if it is gone already.

    True (and nothing done) for a worker started by hand.
    """
    parent = expected_parent()
    if parent is None:
        return True
    if sys.platform == "linux":
        _set_parent_death_signal(signal.SIGTERM)
    # After the prctl: a parent that died before it would never send the signal; it shows here.
    return os.getppid() == parent


def _set_parent_death_signal(sig: signal.Signals) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)``; a failure (a seccomp filter, say) leaves the polling fallback."""
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl among them
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        reason = os.strerror(ctypes.get_errno())
        log.warning("parent_death_signal_not_set", reason=reason, fallback="polling the parent pid every second")
