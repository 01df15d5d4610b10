"""TLS (mutual) and a least-privilege ACL user, on a real redis-server this test starts and certificates it makes.

The ACL rule is the one docs/operations.md gives: the user may touch its namespace's keys and
channels and arq's keys of that namespace, with the command categories actionq uses, and nothing
dangerous (FLUSHALL, KEYS, CONFIG, ...) but INFO, which arq's worker reads at start.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.exceptions

from service import BrokerError, JobClient
from service.processes.embedded import EmbeddedRedis, free_port
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

PASSWORD = "s3cret-actionq"


def acl_rule(namespace: str, password: str) -> str:
    """The least-privilege user of one namespace (as documented)."""
    return (
        f"user actionq on >{password} resetkeys ~{namespace}:* ~arq:in-progress:{namespace}:* "
        f"~arq:result:{namespace}:* resetchannels &{namespace}:* -@all +@read +@write +@keyspace +@scripting "
        "+@pubsub +@connection +@transaction -@dangerous +info +time"
    )


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=actionq test CA", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", "san.cnf", cwd=folder)  # fmt: skip


def _tls_ping(port: int, certs: Path) -> bool:
    """True when the server answers PING over TLS with the client certificate."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"*1\r\n$4\r\nPING\r\n")
            return tls.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class SecureRedis:
    url: str
    """``rediss://actionq:<password>@127.0.0.1:<tls port>/0?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``"""
    port: int
    certs: Path


@pytest.fixture
def secure_redis(server_binary: str, namespace: str, tmp_path: Path) -> Iterator[SecureRedis]:
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default on nopass -@all +ping\n{acl_rule(namespace, PASSWORD)}\n")
    tls_port = free_port()
    server = EmbeddedRedis(
        binary=server_binary,
        extra_args=[
            "--port", "0",  # TLS only: no plain port at all (the later --port wins)
            "--tls-port", str(tls_port), "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", "yes", "--aclfile", str(acl),
        ],
        probe=lambda: _tls_ping(tls_port, certs),
    )  # fmt: skip
    server.start()
    query = f"ssl_ca_certs={certs / 'ca.crt'}&ssl_certfile={certs / 'client.crt'}&ssl_keyfile={certs / 'client.key'}"
    yield SecureRedis(url=f"rediss://actionq:{PASSWORD}@127.0.0.1:{tls_port}/0?{query}", port=tls_port, certs=certs)
    server.stop()


async def _until_live(client: JobClient, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not any(p.live and p.name == "PluginB" for p in await client.plugins()):
            await asyncio.sleep(0.1)


# secure_redis is requested before worker_process so that it is torn down after the worker.
async def test_a_worker_and_a_client_over_mutual_tls_with_a_namespace_user(
    secure_redis: SecureRedis, worker_process: WorkerFactory, namespace: str
) -> None:
    worker = worker_process(bundled_plugins_config(**FAST), env={"ACTIONQ_REDIS_URL": secure_redis.url}, wait=False)
    async with await JobClient.connect(secure_redis.url, namespace=namespace) as client:
        await _until_live(client)
        assert await (await client.submit("PluginB", "calculate_square", {"x": 12})).result(timeout=20) == 144
        handle = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.01}, watch=True)
        assert [s.state.value async for s in handle.progress()][-1] == "succeeded"  # pub/sub under the ACL too
        assert [e.kind async for e in client.events(since="replay:5", follow=False)]  # the events stream
    assert worker.running, worker.log_tail()
    assert PASSWORD not in worker.log_text()


async def test_the_acl_keeps_the_user_to_its_namespace(secure_redis: SecureRedis, namespace: str) -> None:
    async with await JobClient.connect(secure_redis.url, namespace="someone-else") as other:
        with pytest.raises(BrokerError, match="no permissions") as info:
            await other.submit("PluginB", "calculate_square", {"x": 1}, validate=False)
    assert PASSWORD not in str(info.value)
    async with await JobClient.connect(secure_redis.url, namespace=namespace) as client:
        with pytest.raises(redis.exceptions.NoPermissionError):  # straight at redis-py: no translation
            await client.redis.flushall()


async def test_without_tls_a_client_certificate_or_the_password_nothing_connects(
    secure_redis: SecureRedis, namespace: str
) -> None:
    wrong = secure_redis.url.replace(PASSWORD, "not-the-password")
    with pytest.raises(BrokerError) as info:
        await JobClient.connect(wrong, namespace=namespace)
    assert "not-the-password" not in str(info.value)  # redacted
    no_client_cert = secure_redis.url.split("&ssl_certfile")[0]
    with pytest.raises(BrokerError):
        await JobClient.connect(no_client_cert, namespace=namespace)  # mutual TLS: the server wants one
    with pytest.raises(BrokerError):
        await JobClient.connect(f"redis://actionq:{PASSWORD}@127.0.0.1:{secure_redis.port}/0", namespace=namespace)
