"""The ``redis+cluster://`` URL: what it accepts, what it refuses (naming why), and what it hides."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterError, ResponseError, TryAgainError

from service.errors import BrokerError, ConfigError
from service.keys import Keys
from service.redis.cluster import check_layout, is_cluster, layout, parse_cluster_url, pubsub_client, while_slots_move
from service.redis.connection import connect, redact


def test_the_nodes_credentials_and_options_are_read() -> None:
    url = parse_cluster_url("rediss+cluster://app:p%40ss@n1:7000,n2,[::1]:7002/0?socket_timeout=2&ssl_ca_certs=/ca.pem")
    assert url.nodes == (("n1", 7000), ("n2", 6379), ("::1", 7002))
    assert (url.username, url.password, url.tls) == ("app", "p@ss", True)
    assert url.node_kwargs() == {
        "socket_timeout": 2.0,
        "ssl_ca_certs": "/ca.pem",
        "username": "app",
        "password": "p@ss",
        "ssl": True,
    }
    assert "p@ss" not in repr(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster:///0", "no cluster node"),
        ("redis+cluster://n1:7000/3", "database 0 only"),
        ("redis+cluster://n1:7000/?db=1", "a cluster has database 0 only"),
        ("redis+cluster://n1:7000/?ssl=true", "rediss\\+cluster://"),
        ("redis+cluster://n1:7000/?ssl_ca_certs=/x", "needs TLS"),
        ("redis+cluster://n1:7000/?retry_on_timeout=true", "retries on timeouts"),
        ("redis+cluster://n1:99999", "port '99999'"),
        ("redis+cluster://n1,,n2", "empty entry"),
        ("redis+cluster://n1/?socket_timout=1", "unknown option socket_timout"),
    ],
)
def test_a_malformed_url_is_refused_with_its_reason(url: str, problem: str) -> None:
    with pytest.raises(BrokerError, match=problem):
        connect(url)


def test_the_password_is_never_shown() -> None:
    assert redact("redis+cluster://app:s3cr3t@n1:7000,n2:7001/0") == "redis+cluster://app:***@n1:7000,n2:7001/0"
    with pytest.raises(BrokerError) as raised:
        connect("redis+cluster://:s3cr3t@n1:7000/5")
    assert "s3cr3t" not in str(raised.value)


async def test_a_cluster_client_gets_the_partitioned_layout_and_a_plain_pubsub_client() -> None:
    client = connect("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001?socket_timeout=2")
    try:
        assert isinstance(client, RedisCluster)
        assert is_cluster(client)
        assert layout(client, "ns", 6) == Keys("ns", 6)
        subscriber = pubsub_client(client)
        assert not is_cluster(subscriber)
        kwargs = subscriber.connection_pool.connection_kwargs
        assert kwargs["nodes"] == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
        assert kwargs["password"] == "pw"
        await subscriber.aclose()
    finally:
        await client.aclose()
    plain = connect("redis://127.0.0.1:1/0")
    assert layout(plain, "ns", 6) == Keys("ns")
    assert pubsub_client(plain) is plain
    await plain.aclose()


def _try_again() -> TryAgainError:
    error: TryAgainError = TryAgainError("TRYAGAIN")  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    return error


async def test_a_call_the_cluster_did_not_run_is_tried_again_and_others_are_not() -> None:
    calls: list[int] = []

    async def moving_then_ok() -> str:
        calls.append(1)
        if len(calls) < 3:  # TRYAGAIN, then redis-py's exhausted redirections, as broker_errors wraps them
            cause = _try_again() if len(calls) == 1 else ClusterError("TTL exhausted.")
            raise BrokerError("submitting") from cause
        return "done"

    assert await while_slots_move(moving_then_ok) == "done"
    assert len(calls) == 3

    async def refused() -> str:
        raise BrokerError("submitting") from ResponseError("WRONGTYPE")

    with pytest.raises(BrokerError, match="submitting"):
        await while_slots_move(refused)  # a command Redis ran and refused is not sent again

    async def always_moving() -> str:
        raise _try_again()

    with pytest.raises(TryAgainError):
        await while_slots_move(always_moving, for_s=0.2)


def test_the_url_nodes_are_never_dropped_from_the_startup_nodes() -> None:
    client = connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(client, RedisCluster)
    nodes = client.nodes_manager.startup_nodes
    nodes["127.0.0.1:7009"] = ClusterNode("127.0.0.1", 7009)  # one found later
    nodes.pop("127.0.0.1:7000", None)  # what redis-py does on a connection error
    nodes.pop("127.0.0.1:7009", None)
    assert sorted(nodes) == ["127.0.0.1:7000", "127.0.0.1:7001"]
    assert client.reinitialize_steps == 0


async def test_a_namespace_recorded_with_another_partition_count_is_refused_by_name(fake_redis: Redis) -> None:
    await check_layout(fake_redis, Keys("ns", 6))  # the first one records it
    assert await fake_redis.get("ns:layout") == b"6"
    await check_layout(fake_redis, Keys("ns", 6))  # the same: fine
    with pytest.raises(ConfigError, match=r"has .6. partitions .* given 4"):
        await check_layout(fake_redis, Keys("ns", 4))
    await fake_redis.set("ns:layout", b"\xff" * 1000)  # junk written by hand: named, cut short
    with pytest.raises(ConfigError) as refused:
        await check_layout(fake_redis, Keys("ns", 6))
    assert len(str(refused.value)) < 300
    await check_layout(fake_redis, Keys("ns"))  # one Redis: nothing to check
