"""Processes: the embedded Redis server, the worker pool supervisor, and spawning a worker."""
