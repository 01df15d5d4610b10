"""Events: the typed event models (built-in kinds and plugin-defined ones), the job events a worker
emits, the delegate manager and the origin of plugin code it records registrations under, the
bridge that puts events on Redis and the reader that follows them, and the control messages.
"""
