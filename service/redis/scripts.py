"""The Lua scripts, kept as source files in ``service/redis/lua/`` and loaded from there.

Each script opens with a header documenting its KEYS, ARGV and reply, and touches only the keys
its caller declares in KEYS (Redis's rule for scripts, and what Redis Cluster routes by); key
names are built by :mod:`service.keys` only. What several scripts repeat (the terminal states,
the state message, the fields of a started attempt) is in ``prelude.lua``, which is put before
each script's own text.

=============  =====================================  ==========================================
script         called by                              does
=============  =====================================  ==========================================
``submit``     :class:`service.client.store.JobStore`  create jobs; hand a ready one to an idle worker
``read``       :class:`service.client.store.JobStore`  a record, live or final; mark it followed
``cancel``     :class:`service.client.store.JobStore`  cancel a waiting job, flag and push a running one
``progress``   :class:`service.worker.progress.ProgressWriter`  a running job's latest progress
``take``       :class:`service.worker.take.Claims`     claim and start ready jobs; list the worker
``settle``     :class:`service.worker.settle.Settler`  record how attempts ended, in batches
``limit``      :class:`service.worker.limits.Limits`   concurrency limits: slots under leases, waiters
``forget``     :class:`service.client.deadletters.DeadLetterStore`  remove a replayed letter unless replaced
=============  =====================================  ==========================================
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

__all__ = ["SCRIPTS", "ScriptName", "register", "source"]

ScriptName = Literal["submit", "read", "cancel", "progress", "take", "settle", "limit", "forget"]
SCRIPTS: tuple[ScriptName, ...] = ("submit", "read", "cancel", "progress", "take", "settle", "limit", "forget")
_PRELUDE = "prelude"


@cache
def _text(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def source(name: ScriptName) -> str:
    """The full text Redis runs for script ``name``: the prelude, then the script."""
    return f"{_text(_PRELUDE)}\n{_text(name)}"


def register(redis: Redis, name: ScriptName) -> AsyncScript:
    """Script ``name`` bound to ``redis``: called with ``keys=`` and ``args=``, by ``EVALSHA``.

    redis-py loads it on the first call that finds it missing (``NOSCRIPT``), so a restarted or
    flushed server costs one extra round trip, not an error.
    """
    return redis.register_script(source(name))
