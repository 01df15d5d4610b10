"""Plugins: the base class, manifests and their argument types, loading and calling plugin code,
the registry that advertises what workers serve, and what a running action sees of its job
(:class:`~service.plugins.context.JobContext`, its cancellation token, checkpoint and progress tree).
"""
