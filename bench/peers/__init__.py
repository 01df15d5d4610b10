"""The contenders of ``bench compare``: actionq and each optional peer, one module each.

Each ``bench/peers/<kind>peer.py`` holds all of one library's code, short enough to review in one
sitting: the job functions (thin wrappers of :mod:`bench.jobs`), ``serve(workload)`` (its worker,
run by :mod:`bench.peerworker`), ``open_producer(workload)`` (its bulk enqueue, run by
:mod:`bench.producer`) and its :class:`~bench.peers.base.Contender` (the bench's client for
results and cancels). A peer that is not installed is skipped with a line saying so.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a peer's worker process imports this package: it must not load actionq
    from bench.harness import BenchEnv
    from bench.peers.base import Contender

__all__ = ["PEERS", "Peer", "contender_factories", "missing_peers", "peer_module"]


@dataclass(frozen=True)
class Peer:
    """One contender: its label, its module and class, and the packages it needs."""

    label: str
    kind: str
    cls: str
    needs: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def installed(self) -> bool:
        """Whether every package it needs can be imported."""
        return all(importlib.util.find_spec(name) is not None for name in self.needs)

    def make(self, env: BenchEnv) -> Contender:
        """A fresh contender (not started) on ``env``."""
        cls: type[Contender] = getattr(peer_module(self.kind), self.cls)
        return cls(env, **self.kwargs)


PEERS: tuple[Peer, ...] = (
    Peer("actionq", "actionq", "Actionq", ()),
    Peer("arq defaults", "arq", "Arq", ("arq",), {"variant": "defaults"}),
    Peer("arq tuned", "arq", "Arq", ("arq",), {"variant": "tuned"}),
    Peer("saq", "saq", "Saq", ("saq",)),
    Peer("taskiq", "taskiq", "Taskiq", ("taskiq", "taskiq_redis", "uvloop")),
    Peer("dramatiq", "dramatiq", "Dramatiq", ("dramatiq",)),
    Peer("celery", "celery", "Celery", ("celery",)),
    Peer("streaq", "streaq", "Streaq", ("streaq",)),
    Peer("rq", "rq", "Rq", ("rq",)),
)


def peer_module(kind: str) -> ModuleType:
    """``bench.peers.<kind>peer``; an unknown kind is an error naming the known ones."""
    kinds = sorted({peer.kind for peer in PEERS})
    if kind not in kinds:
        raise ValueError(f"unknown contender kind {kind!r}; known: {', '.join(kinds)}")
    return importlib.import_module(f"bench.peers.{kind}peer")


def select(only: tuple[str, ...] = ()) -> list[Peer]:
    """The installed contenders, in report order; ``only``: just those labels (actionq always)."""
    labels = {peer.label for peer in PEERS}
    unknown = [label for label in only if label not in labels]
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(sorted(labels))}")
    chosen = [peer for peer in PEERS if not only or peer.label in only or peer.label == "actionq"]
    return [peer for peer in chosen if peer.installed]


def contender_factories(env: BenchEnv, only: tuple[str, ...] = ()) -> list[Callable[[], Contender]]:
    """One factory per installed contender: each repetition starts a fresh one."""
    return [functools.partial(peer.make, env) for peer in select(only)]


def missing_peers() -> list[str]:
    """A line per peer that is not installed (skipped)."""
    return [
        f"{peer.label}: skipped, not installed (needs {', '.join(peer.needs)}; pip install -e '.[peers]')"
        for peer in PEERS
        if not peer.installed
    ]
