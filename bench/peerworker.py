"""``python -m bench.peerworker KIND``: a peer's worker, configured by the ``BENCH_*`` variables.

Runs ``bench.peers.<KIND>peer.serve(Workload.from_env())`` until SIGTERM: each library's own
worker, started the way its command-line entry point starts it (see each module).
"""

from __future__ import annotations

import sys

from bench.jobs import Workload
from bench.peers import peer_module


def main(argv: list[str]) -> None:
    """Run the named peer's worker."""
    if len(argv) != 1:
        raise SystemExit("usage: python -m bench.peerworker KIND")
    peer_module(argv[0]).serve(Workload.from_env())


if __name__ == "__main__":
    main(sys.argv[1:])
