"""What a report says about the machine it ran on: CPU, Python, Redis server and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from service.processes.embedded import find_server_binary

__all__ = ["machine_info"]

_PACKAGES = ("actionq", "arq", "redis", "hiredis", "pydantic")
# The optional peers of ``bench compare`` (None when not installed).
_PEER_PACKAGES = ("saq", "taskiq", "taskiq-redis", "uvloop", "dramatiq", "celery", "kombu", "streaq", "coredis", "rq")
_REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict[str, Any]:
    """CPU count and model, OS, Python, the redis-server binary and the versions that matter."""
    binary = find_server_binary()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": _server_version(binary),
        "redis_server_binary": binary,
        "packages": {name: _version(name) for name in _PACKAGES},
        "peer_packages": {name: _version(name) for name in _PEER_PACKAGES},
        "git_commit": _git_commit(),
        # Other work on the machine skews every figure; this says how busy it was when we started.
        "load_average_at_start": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or "unknown"


def _server_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    # rev-parse only reads; the working tree's state (edits not committed) is not recorded.
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    return out.stdout.strip() or None
