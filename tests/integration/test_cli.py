"""The actionq command line against a real Redis and a real worker process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.keys import Keys
from service.processes.embedded import free_port
from service.redis.cluster import layout
from service.settings import Settings
from tests.conftest import BUNDLED_PLUGINS, FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies


def _env(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    return {**env, "ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace, "COLUMNS": "200"}


def actionq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_submit_status_result_plugins_workers(worker_process: WorkerFactory, redis_url: str, namespace: str) -> None:
    worker_process(bundled_plugins_config(**FAST))
    env = _env(redis_url, namespace)

    done = actionq("submit", "PluginB", "calculate_square", "x=6", "--wait", "--timeout", "20", env=env)
    assert done.returncode == 0, done.stderr
    job_id, result = done.stdout.split()
    assert result == "36"

    status = actionq("status", job_id, "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert actionq("result", job_id, env=env).stdout.strip() == "36"

    listed = json.loads(actionq("plugins", "--json", env=env).stdout)
    assert {p["manifest"]["name"] for p in listed} == set(BUNDLED_PLUGINS)
    assert all(p["live"] for p in listed)
    table = actionq("plugins", env=env).stdout
    assert "it_sync_add" in table
    assert "b: int = 1" in table
    workers = json.loads(actionq("workers", "--json", env=env).stdout)
    assert len(workers) == 1
    # The shared options, given once before the command, stand in for the environment.
    bare = {k: v for k, v in env.items() if k not in ("ACTIONQ_REDIS_URL", "ACTIONQ_NAMESPACE")}
    given = actionq("--redis-url", redis_url, "--namespace", namespace, "workers", "--json", env=bare)
    assert [w["worker_id"] for w in json.loads(given.stdout)] == [workers[0]["worker_id"]], given.stderr


def test_json_params_job_id_and_failures(worker_process: WorkerFactory, redis_url: str, namespace: str) -> None:
    worker_process(bundled_plugins_config(**FAST))
    env = _env(redis_url, namespace)
    first = actionq("submit", "InteropTarget", "it_async_add", "a:=40", "--job-id", "cli-1", "--wait", env=env)
    assert first.stdout.split() == ["cli-1", "41"], first.stderr
    again = actionq("submit", "InteropTarget", "it_async_add", "a:=40", "--job-id", "cli-1", env=env)
    assert again.returncode == 0
    assert "already exists" in again.stderr

    failed = actionq("submit", "long_running", "fail", "message=bad day", "--wait", env=env)
    assert failed.returncode == 1
    assert "RuntimeError: bad day" in failed.stderr
    assert actionq("result", "cli-nope", "--timeout", "1", env=env).returncode == 1


def test_rejections_exit_2_and_name_the_problem(worker_process: WorkerFactory, redis_url: str, namespace: str) -> None:
    worker_process(bundled_plugins_config(**FAST))
    env = _env(redis_url, namespace)
    bad = actionq("submit", "InteropTarget", "it_sync_add", "a=two", env=env)
    assert bad.returncode == 2
    assert "a: Input should be a valid integer" in bad.stderr
    unknown = actionq("submit", "Nope", "x", env=env)
    assert unknown.returncode == 2
    assert "unknown plugin 'Nope'" in unknown.stderr
    misspelt = actionq("plugins", env={**env, "ACTIONQ_NAMESPCE": "x"})
    assert misspelt.returncode == 2
    assert "ACTIONQ_NAMESPCE" in misspelt.stderr
    no_redis = actionq("plugins", env={k: v for k, v in env.items() if k != "ACTIONQ_REDIS_URL"})
    assert no_redis.returncode == 2
    assert "no Redis configured" in no_redis.stderr


def test_up_runs_the_demo_on_a_private_redis_and_stops_cleanly(tmp_path: Path, namespace: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env.update(ACTIONQ_NAMESPACE=namespace, COLUMNS="200", ACTIONQ_GATEWAY__PORT=str(free_port()))
    done = actionq("up", "--exit-after-demo", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Redis: private" in done.stderr
    assert f"gateway: http://127.0.0.1:{env['ACTIONQ_GATEWAY__PORT']}" in done.stderr
    assert "succeeded" in done.stdout
    assert "36" in done.stdout
    assert "RuntimeError" in done.stdout  # the demo's deliberate failure
    assert "stopped." in done.stderr


@pytest.mark.parametrize(
    ("sig", "close_stderr"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["ctrl-c", "sigterm", "ctrl-c-with-its-pipe-gone"],
)
def test_up_stops_everything_on_ctrl_c_or_sigterm(namespace: str, sig: signal.Signals, close_stderr: bool) -> None:
    # The third case is `make run 2>&1 | tee` on Ctrl-C: tee is gone, so up's last lines cannot be written.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env.update(ACTIONQ_NAMESPACE=namespace, COLUMNS="200", ACTIONQ_GATEWAY__PORT=str(free_port()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "up", "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    seen = ""
    while "Press Ctrl-C" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "Press Ctrl-C" in seen
    url = next(line for line in seen.splitlines() if "ACTIONQ_REDIS_URL=" in line).split("ACTIONQ_REDIS_URL=")[1]
    url = url.split()[0]
    gateway = f"http://127.0.0.1:{env['ACTIONQ_GATEWAY__PORT']}"
    assert f"gateway: {gateway}" in seen
    with urllib.request.urlopen(f"{gateway}/v1/plugins", timeout=10) as answer:  # up's gateway serves its Redis
        assert {p["name"] for p in json.load(answer)} >= {"PluginB", "long_running"}
    if close_stderr:
        proc.stderr.close()
    proc.send_signal(sig)
    if close_stderr:
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    else:
        _, rest = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "stopped." in rest
    import redis

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        redis.Redis(port=port, socket_connect_timeout=0.5).ping()
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("the private Redis is still running after up stopped")
    with pytest.raises(urllib.error.URLError):  # up stopped its gateway before it exited, stderr gone or not
        urllib.request.urlopen(f"{gateway}/healthz", timeout=2)
    assert Keys(namespace).workers()  # namespaced, nothing else to clean: the server is gone


def test_watch_and_follow_show_progress_then_the_result(
    worker_process: WorkerFactory, redis_url: str, namespace: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    env = _env(redis_url, namespace)
    followed = actionq("submit", "long_running", "pipeline", "stages=2", "steps=3", "delay_s=0.02", "--follow", env=env)
    assert followed.returncode == 0, followed.stderr
    job_id, result = followed.stdout.split()
    assert result == "6"
    assert "stage 2 (weight 2)" in followed.stderr
    assert "100%" in followed.stderr

    watched = actionq("watch", job_id, "--timeout", "20", env=env)  # after the end: final state, then result
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip() == "6"
    assert "(succeeded)" in watched.stderr

    failed = actionq("submit", "long_running", "fail", "--follow", env=env)
    assert failed.returncode == 1
    assert "RuntimeError: boom" in failed.stderr


def test_cancel_and_dead_letter_commands(worker_process: WorkerFactory, redis_url: str, namespace: str) -> None:
    env = _env(redis_url, namespace)
    queued = actionq("submit", "PluginB", "calculate_square", "x=2", "--no-validate", "--defer", "60", env=env)
    job_id = queued.stdout.strip()
    cancelled = actionq("cancel", job_id, "--reason", "not needed", env=env)
    assert cancelled.stdout.strip() == "cancelled_queued", cancelled.stderr
    assert actionq("cancel", job_id, env=env).stdout.strip() == "already_finished"
    assert "no job 'no-such-job'" in actionq("cancel", "no-such-job", env=env).stderr

    worker_process(bundled_plugins_config(**FAST))
    failed = actionq(
        "submit", "long_running", "fail", "message=dead on arrival", "--job-id", "cli-dead", "--wait", env=env
    )
    assert failed.returncode == 1
    listed = actionq("dead", "list", "--json", env=env)
    assert [d["job_id"] for d in json.loads(listed.stdout)] == ["cli-dead"]
    shown = json.loads(actionq("dead", "show", "cli-dead", env=env).stdout)
    assert shown["error"]["message"] == "dead on arrival"
    assert len(shown["attempts"]) == 1
    replayed = actionq("dead", "replay", "cli-dead", "--new-id", env=env)
    new_id = replayed.stdout.strip()
    assert replayed.returncode == 0
    assert new_id != "cli-dead"
    assert actionq("result", new_id, "--timeout", "20", env=env).returncode == 1  # fails again, dead again
    assert actionq("dead", "purge", "--all", env=env).stdout.strip() == "1"
    assert actionq("dead", "purge", env=env).returncode == 2  # names nothing: refused
    assert actionq("dead", "show", "cli-dead", env=env).returncode == 1


async def test_submit_publish_marks_the_job_followed_from_the_start(
    redis: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    env = _env(redis_url, namespace)
    for job_id, extra in (("cli-pub", ["--publish"]), ("cli-quiet", [])):
        args = ["submit", "PluginB", "calculate_square", "x=1", "--job-id", job_id, "--defer", "60", "--no-validate"]
        assert actionq(*args, *extra, env=env).returncode == 0
    keys = layout(redis, namespace, Settings().cluster_partitions)  # on a cluster, the partitioned names
    assert await redis.hget(keys.job("cli-pub"), "watched") == b"1"  # type: ignore[misc]
    assert await redis.hget(keys.job("cli-quiet"), "watched") is None  # type: ignore[misc]


def test_health_says_whether_a_live_worker_is_there(
    worker_process: WorkerFactory, redis_url: str, namespace: str
) -> None:
    env = _env(redis_url, namespace)
    alone = actionq("health", env=env)
    assert alone.returncode == 1
    assert "unhealthy: Redis answers, but no live worker" in alone.stderr
    worker_process(bundled_plugins_config(**FAST))
    host = socket.gethostname()
    healthy = actionq("health", "--host", host, env=env)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith(f"healthy: 1 live worker(s) on host {host!r}")
    elsewhere = actionq("health", "--host", "not-this-host", env=env)
    assert elsewhere.returncode == 1
    assert "no live worker on host 'not-this-host'" in elsewhere.stderr
    unreachable = actionq("health", env={**env, "ACTIONQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert unreachable.returncode == 1
    assert "unhealthy" not in unreachable.stderr  # the broker error says what failed instead
    assert unreachable.stderr.strip()
