"""``python -m workers [--config config.yml]``: run one actionq worker."""

from __future__ import annotations

import argparse

from service.settings import load_settings
from service.worker.adapter import main


def run() -> None:
    """Parse ``--config`` and run a worker until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--config", "-c", default=None, help="config.yml (default: $ACTIONQ_CONFIG)")
    args = parser.parse_args()
    main(load_settings(args.config))


run()
