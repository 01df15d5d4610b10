"""The producer's side: :class:`~service.client.client.JobClient` submits jobs,
:class:`~service.client.handle.JobHandle` follows one, :class:`~service.client.sync.SyncJobClient`
does both without asyncio, and the dead-letter store lists and replays failed jobs.

It never imports the worker (an ``import-linter`` contract keeps it so).
"""
