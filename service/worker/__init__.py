"""The worker's side: the arq adapter and its loop, taking and settling jobs, the executor
pipeline and its policies, progress and stream writing, and remote control.

It never imports the client or the CLI (an ``import-linter`` contract keeps it so).
"""
