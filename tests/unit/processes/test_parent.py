"""A worker owned by its parent: the environment it gets, and the parent-death signal it sets.

``die_with_parent`` changes the calling process, so each check of it runs in a child interpreter
(never in the test process, which must not die with its own parent).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from service.processes import parent
from service.processes.parent import PARENT_ENV, expected_parent, owned_env

# Run in a child: call die_with_parent(), then print its answer and the parent-death signal now set.
_PROBE = """
import ctypes, sys
from service.processes.parent import die_with_parent
alive = die_with_parent()
signum = ctypes.c_int(-1)
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(2, ctypes.byref(signum), 0, 0, 0)  # PR_GET_PDEATHSIG
print(alive, signum.value)
"""


def _probe(parent_pid: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    if parent_pid is not None:
        env[PARENT_ENV] = parent_pid
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True, timeout=30
    )
    alive, signum = out.stdout.split()
    return alive, int(signum)


def test_owned_env_names_this_process_as_the_parent() -> None:
    env = owned_env({"PATH": "/bin", PARENT_ENV: "1"})
    assert env == {"PATH": "/bin", PARENT_ENV: str(os.getpid())}


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("12x", None), ("4242", 4242)])
def test_expected_parent_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: int | None
) -> None:
    if value is None:
        monkeypatch.delenv(PARENT_ENV, raising=False)
    else:
        monkeypatch.setenv(PARENT_ENV, value)
    assert expected_parent() == expected


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_an_owned_worker_asks_for_sigterm_when_its_parent_dies() -> None:
    assert _probe(str(os.getpid())) == ("True", signal.SIGTERM)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_started_by_hand_ignores_its_parent() -> None:
    assert _probe(None) == ("True", 0)


def test_an_owned_worker_whose_parent_is_gone_already_says_so() -> None:
    # Its parent (this process) is not the one the environment names: that one has exited.
    assert _probe(str(os.getpid() + 1_000_000))[0] == "False"


def test_a_refused_prctl_leaves_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    class Libc:
        def prctl(self, *args: int) -> int:
            return -1

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc())
    with capture_logs() as logs:
        parent._set_parent_death_signal(signal.SIGTERM)  # no error: the running worker polls instead
    assert [entry["event"] for entry in logs] == ["parent_death_signal_not_set"]
