"""Events: the typed event models, the job events a worker emits, the delegate manager, the
bridge that puts events on Redis and the reader that follows them, and the control messages.
"""
