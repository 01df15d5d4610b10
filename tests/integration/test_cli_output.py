"""What the CLI and a worker print, with a real Redis and real worker processes (issue 13, item 10).

Piped output of the tables is tab-separated and complete; a delegate failing on every event costs
the worker's console log one line per failure; ``actionq up`` keeps its stdout for the demo table.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import JobClient
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, WorkerProc, bundled_plugins_config, fixture_plugin

FAILURES = 5


def actionq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def _env(redis_url: str, namespace: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_") and k not in ("COLUMNS", "FORCE_COLOR")}
    return {**env, "ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace, **more}


async def _lines_with(worker: WorkerProc, text: str, count: int, timeout_s: float = 20) -> list[str]:
    """Wait until ``count`` lines of the worker's log contain ``text``; those lines."""
    deadline = time.monotonic() + timeout_s
    while len(found := [line for line in worker.log_text().splitlines() if text in line]) < count:
        if not worker.running or time.monotonic() > deadline:
            pytest.fail(f"worker logged {len(found)} of {count} {text!r} lines:\n{worker.log_tail()}", pytrace=False)
        await asyncio.sleep(0.05)
    return found


async def test_a_delegate_failing_on_every_event_logs_one_line_per_failure(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    config = bundled_plugins_config(**FAST)
    config["plugins"].append(fixture_plugin("failing_delegate"))
    worker = worker_process(config, env={"ACTIONQ_LOG_FORMAT": "console"})
    handles = [await client.submit("failing_delegate", "ping") for _ in range(FAILURES)]
    assert [await h.result(timeout=20) for h in handles] == ["pong"] * FAILURES  # the jobs are not affected

    failed = await _lines_with(worker, "delegate_failed", FAILURES)
    for handle in handles:
        (line,) = [line for line in failed if handle.job_id in line]
        assert line.endswith(f"exception=ValueError: delegate broke on job {handle.job_id}"), line
    log = worker.log_text()
    for traceback_text in ("Traceback", "locals", "a local a rich traceback"):
        assert traceback_text not in log, log


async def test_piped_tables_name_the_worker_and_its_plugins_whole(
    worker_process: WorkerFactory, client: JobClient, redis_url: str, namespace: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    (info,) = await client.workers()
    env = _env(redis_url, namespace, COLUMNS="80")

    workers = actionq("workers", env=env)
    assert workers.returncode == 0, workers.stderr
    header, *rows = workers.stdout.splitlines()
    assert header == "worker\thost\tpid\tstate\tplugins\trunning\tfailed plugins"
    assert [row.split()[0] for row in rows] == [info.worker_id]  # `awk '{print $1}'`: ready for --worker
    paused = actionq("pause", "--worker", rows[0].split("\t")[0], env=env)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.splitlines()[1].split("\t")[:3] == [info.worker_id, info.hostname, "acted"]

    plugins = actionq("plugins", env=env)
    assert plugins.returncode == 0, plugins.stderr
    squares = [line for line in plugins.stdout.splitlines() if "calculate_square" in line]  # `| grep`
    assert [line.split("\t")[:4] for line in squares] == [["PluginB", "1.0.0", "yes", "calculate_square"]]
    assert not {"│", "…"} & set(plugins.stdout), plugins.stdout


def test_up_keeps_its_stdout_for_the_demo_table_and_the_worker_log_in_a_file(tmp_path: Path, namespace: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_") and k != "COLUMNS"}
    env.update(ACTIONQ_NAMESPACE=namespace, TMPDIR=str(tmp_path))  # where up puts the worker's log
    done = actionq("up", "--exit-after-demo", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header == "job\tplugin.action\tparams\tstate\tresult / error"
    assert [len(row.split("\t")[0]) for row in rows] == [32] * 5, done.stdout  # whole job ids
    assert "job_dead_lettered" not in done.stdout + done.stderr  # the demo's failure is logged, in the log file
    log_path = Path(next(line for line in done.stderr.splitlines() if line.startswith("worker: ")).split(" log ")[1])
    assert log_path.parent == tmp_path
    assert "job_dead_lettered" in log_path.read_text()
