"""Thin, runnable worker entry points.

``python -m workers --config config.yml`` runs an actionq worker (the same as ``actionq worker``).
There is no arq ``WorkerSettings`` class here: arq's own CLI builds a plain ``arq.Worker``, which
reads a single queue, while an actionq worker reads one queue per plugin it loaded (see
:mod:`service.worker.adapter`).
"""
