"""The ``actionq`` command line (typer): job commands, operator commands, ``up``.

The console script ``actionq`` is :func:`main`; the app and its shared options are
:mod:`service.cli.app`, the commands :mod:`service.cli.jobs` and :mod:`service.cli.operate`.
"""

from service.cli import gateway, jobs, operate
from service.cli.app import app
from service.cli.jobs import parse_params

__all__ = ["app", "gateway", "jobs", "main", "operate", "parse_params"]


def main() -> None:
    """Console-script entry point."""
    app()
