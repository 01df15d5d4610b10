"""Reproducible benchmarks of actionq (DESIGN.md §8): ``python -m bench ENTRY [--quick]``.

Each entry starts its own private redis-server and worker subprocesses, measures, and reports
every figure as the median over repeated runs, in a table and a JSON file under ``bench/results/``.
Entries are registered in :mod:`bench.entries`. Nothing here is a test: figures are reported,
never asserted.
"""
