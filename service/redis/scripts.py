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

import hashlib
from collections.abc import Awaitable, Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from service.redis.cluster import is_cluster

__all__ = ["SCRIPTS", "Script", "ScriptName", "register", "run_replicated", "source"]

ScriptName = Literal["submit", "read", "cancel", "progress", "take", "settle", "limit", "forget"]
SCRIPTS: tuple[ScriptName, ...] = ("submit", "read", "cancel", "progress", "take", "settle", "limit", "forget")
_PRELUDE = "prelude"


@cache
def _text(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def source(name: ScriptName) -> str:
    """The full text Redis runs for script ``name``: the prelude, then the script."""
    return f"{_text(_PRELUDE)}\n{_text(name)}"


class Script(Protocol):
    """A registered script: ``await script(keys=[...], args=[...])`` (``client=``: on a pipeline)."""

    def __call__(self, keys: Sequence[Any] = ..., args: Sequence[Any] = ..., client: Any = ...) -> Awaitable[Any]:
        """Run it with these keys and arguments; its reply."""
        ...


async def run_replicated(
    redis: Redis, script: Script, keys: Sequence[Any], args: Sequence[Any], *, replicas: int, timeout_s: float
) -> tuple[Any, int]:
    """Run ``script``, then ``WAIT`` for ``replicas`` replicas (on the same connection, as ``WAIT``
    needs: one pipeline); the reply and how many replicas acknowledged. ``replicas == 0``: no wait
    (and the count is 0)."""
    if not replicas:
        return await script(keys=keys, args=args), 0
    async with redis.pipeline(transaction=False) as pipe:
        await script(keys=keys, args=args, client=pipe)  # queued: a pipeline runs nothing until execute()
        pipe.execute_command("WAIT", replicas, int(timeout_s * 1000))
        reply, acknowledged = await pipe.execute()
    return reply, int(acknowledged)


def register(redis: Redis, name: ScriptName) -> Script:
    """Script ``name`` bound to ``redis``: called with ``keys=`` and ``args=``, by ``EVALSHA``.

    redis-py loads it on the first call that finds it missing (``NOSCRIPT``), so a restarted or
    flushed server costs one extra round trip, not an error. On Redis Cluster, :class:`_ClusterScript`.
    """
    if is_cluster(redis):
        return _ClusterScript(redis, source(name))
    script: AsyncScript = redis.register_script(source(name))
    return script


class _ClusterScript:
    """``EVALSHA``, and on ``NOSCRIPT`` an ``EVAL`` of the text, which loads it where it ran.

    redis-py's script loads a missing script with ``SCRIPT LOAD`` on the primaries it knows and
    sends ``EVALSHA`` again; during a resharding that second call can still land on a node
    without it (seen in the resharding test). An ``EVAL`` goes where the keys are and always runs.
    """

    def __init__(self, redis: Redis, text: str) -> None:
        self.redis = redis
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        """Run the script on the node owning its keys' slot; its reply (``client``: unused, no pipelines here)."""
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await self.redis.eval(self.text, len(keys), *keys, *args)  # type: ignore[misc]
