"""The journal line of the fixture plugins of the fault suite and the limit tests (tests.faultkit.read_journal).

Lines are ``S|D|C <job id> <attempt> <pid> <epoch ms>``, each one ``write`` on an ``O_APPEND``
descriptor (shorter than ``PIPE_BUF``: whole, never interleaved, across processes).
"""

from __future__ import annotations

import os
import time

from service.plugins.context import JobContext


def journal(path: str, mark: str, ctx: JobContext) -> None:
    """Append ``mark``'s line for the running attempt of ``ctx`` to the journal at ``path``."""
    line = f"{mark} {ctx.job_id} {ctx.attempt} {os.getpid()} {int(time.time() * 1000)}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
