"""The Redis layer: the connection and its error boundary, batching, pub/sub, and the Lua scripts.

Everything here is plumbing shared by producers and workers; what the keys are called is
:mod:`service.keys`, what the data means is :mod:`service.models`.
"""
