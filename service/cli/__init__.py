"""The ``actionq`` command line (typer): job commands, operator commands, ``up``.

The console script ``actionq`` is :func:`main`.
"""

from service.cli.app import app, main, parse_params

__all__ = ["app", "main", "parse_params"]
