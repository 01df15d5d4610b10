"""The ``redis+sentinel://`` URL: what it parses to, what ``connect()`` builds from it, what is refused
(with the reason and never the password), and how it is redacted. Nothing here connects."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_exc
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection

from service.errors import BrokerError
from service.redis.connection import LeanPool, LeanSentinelPool, connect, redact
from service.redis.sentinel import (
    FollowingConnection,
    FollowingSSLConnection,
    SentinelURL,
    is_sentinel_url,
    parse_sentinel_url,
)

SECRET = "pa:ss/w@rd"
QUOTED = "pa%3Ass%2Fw%40rd"


def test_the_full_form() -> None:
    url = f"redis+sentinel://app:{QUOTED}@s1:26380,10.0.0.2,[::1]:5000/jobs/3?sentinel_password=sp&socket_timeout=2.5"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("s1", 26380), ("10.0.0.2", 26379), ("::1", 5000))
    assert (parsed.master, parsed.db, parsed.username, parsed.password) == ("jobs", 3, "app", SECRET)
    assert parsed.sentinel_password == "sp"
    assert parsed.node_options == {"socket_timeout": 2.5}
    assert not parsed.tls
    assert SECRET not in repr(parsed)
    assert "sp" not in repr(parsed).replace("sentinel", "")


def test_the_short_form_defaults() -> None:
    parsed = parse_sentinel_url("redis+sentinel://sentinel/mymaster")
    assert parsed == SentinelURL(sentinels=(("sentinel", 26379),), master="mymaster")
    assert parse_sentinel_url("redis+sentinel://sentinel/mymaster/").db == 0
    assert parse_sentinel_url("REDIS+SENTINEL://sentinel/mymaster").master == "mymaster"


def test_a_password_with_an_unescaped_slash_stays_whole() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:a/b@s1/m")
    assert (parsed.username, parsed.password, parsed.sentinels) == (None, "a/b", (("s1", 26379),))


def test_tls_is_the_scheme_and_its_options_reach_the_sentinels_too() -> None:
    parsed = parse_sentinel_url("rediss+sentinel://s1/m?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required")
    assert parsed.tls
    assert parsed.node_kwargs()["ssl"] is True
    sentinel = parsed.sentinel_kwargs()
    assert sentinel["ssl"] is True
    assert sentinel["ssl_ca_certs"] == "/etc/ca.pem"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel:///m", "no Sentinel host"),
        ("redis+sentinel://s1", "no master name"),
        ("redis+sentinel://s1/", "no master name"),
        ("redis+sentinel://s1,,s2/m", "no host name"),
        ("redis+sentinel://s1:notaport/m", "port 'notaport' is not a number"),
        ("redis+sentinel://s1:70000/m", "port '70000' is not a number from 1 to 65535"),
        ("redis+sentinel://[::1/m", "an IPv6 address is written [address]:port"),
        ("redis+sentinel://s1/m/zero", "db 'zero' is not a number"),
        ("redis+sentinel://s1/m/0/extra", "the path has 3 parts"),
        ("redis+sentinel://s1/m?ssl=true", "TLS is the scheme: rediss+sentinel://"),
        ("redis+sentinel://s1/m?db=2", "the db is the path after the master name"),
        ("redis+sentinel://s1/m?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs TLS"),
        ("redis+sentinel://s1/m?sokcet_timeout=1", "unknown option sokcet_timeout (known: "),
        ("redis+sentinel://s1/m?socket_timeout=soon", "option socket_timeout='soon'"),
        ("redis+sentinel://s1/m?socket_timeout=1&socket_timeout=2", "option socket_timeout is given twice"),
        ("redis+sentinel://s1/m?min_other_sentinels=-1", "option min_other_sentinels='-1': negative"),
        ("redis+sentinel://s1/m#frag", "no #fragment"),
    ],
)
def test_a_malformed_url_is_a_broker_error_that_says_what_is_wrong(url: str, reason: str) -> None:
    with_password = url.replace("://", f"://app:{QUOTED}@", 1)
    with pytest.raises(BrokerError, match="invalid Redis URL") as caught:
        connect(with_password)
    message = str(caught.value)
    assert reason in message
    assert QUOTED not in message
    assert SECRET not in message


def test_a_secret_option_value_is_not_shown_when_it_is_refused() -> None:
    with pytest.raises(BrokerError) as caught:
        connect("redis+sentinel://s1/m?sentinel_password=hunter2&sentinel_password=again")
    assert "given twice" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_connect_builds_a_client_whose_pool_asks_the_sentinels() -> None:
    client = connect(f"redis+sentinel://app:{QUOTED}@s1,s2:26380/jobs/2?sentinel_password=sp", socket_timeout=7)
    pool = client.connection_pool
    assert isinstance(pool, LeanSentinelPool)
    assert isinstance(pool, LeanPool)  # the packer and the lean connection check, as on a plain URL
    assert pool.service_name == "jobs"
    assert pool.is_master
    assert pool.connection_class is FollowingConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", SECRET)
    # The options connect() always sets, and the caller's, as for redis://.
    assert (kwargs["health_check_interval"], kwargs["socket_keepalive"], kwargs["socket_timeout"]) == (30, True, 7)
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"]) for s in sentinels
    ]
    assert addresses == [("s1", 26379), ("s2", 26380)]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sp"}
    assert not kwargs.get("decode_responses")  # bytes mode, as arq expects


def test_the_url_wins_over_the_callers_options_as_in_redis_py() -> None:
    client = connect("redis+sentinel://s1/m?socket_timeout=1.5", socket_timeout=7)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 1.5


def test_tls_picks_the_tls_connection_class() -> None:
    pool = connect("rediss+sentinel://s1/m?ssl_cert_reqs=none").connection_pool
    assert pool.connection_class is FollowingSSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert "ssl" not in pool.connection_kwargs  # consumed by the pool, never passed to a connection


def test_a_plain_url_is_as_before() -> None:
    pool = connect("redis://localhost:6379/1").connection_pool
    assert type(pool) is LeanPool
    assert not isinstance(pool, SentinelConnectionPool)


async def test_closing_the_client_closes_its_sentinels_connections() -> None:
    client = connect("redis+sentinel://s1,s2/m")
    pool = client.connection_pool
    assert isinstance(pool, LeanSentinelPool)
    closed: list[int] = []
    for i, sentinel in enumerate(pool.sentinel_manager.sentinels):

        async def record(inuse_connections: bool = True, i: int = i) -> None:
            closed.append(i)

        sentinel.connection_pool.disconnect = record
    await pool.disconnect(inuse_connections=False)  # what the pool does when the master moves: keep them
    assert closed == []
    await client.aclose()
    assert sorted(closed) == [0, 1]


def test_is_sentinel_url() -> None:
    assert is_sentinel_url("redis+sentinel://s/m")
    assert is_sentinel_url("rediss+sentinel://s/m")
    assert not is_sentinel_url("redis://s:6379/0")
    assert not is_sentinel_url("redis+sentinel")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis+sentinel://app:s3cr3t@s1,s2:26380/jobs/0", "redis+sentinel://app:***@s1,s2:26380/jobs/0"),
        ("redis+sentinel://:s3cr3t@[::1]:5000,[::2]/jobs", "redis+sentinel://:***@[::1]:5000,[::2]/jobs"),
        ("redis+sentinel://:a/b@s1/m", "redis+sentinel://:***@s1/m"),
        (
            "rediss+sentinel://s1/m?sentinel_password=s3cr3t&ssl_ca_certs=/ca.pem",
            "rediss+sentinel://s1/m?sentinel_password=***&ssl_ca_certs=/ca.pem",
        ),
        ("redis+sentinel://app@s1/m", "redis+sentinel://app@s1/m"),
    ],
)
def test_redact_hides_every_password_of_the_form(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(("is_master", "error", "becomes"), [
    (True, "NOREPLICAS Not enough good replicas to write.", redis_exc.ConnectionError),
    (False, "NOREPLICAS Not enough good replicas to write.", redis_exc.ResponseError),  # a replica pool's
    (True, "ERR unknown command", redis_exc.ResponseError),
])  # fmt: skip
async def test_noreplicas_from_a_master_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch, is_master: bool, error: str, becomes: type[Exception]
) -> None:
    """A demoted-but-alive master refuses writes with NOREPLICAS: the connection must go and ask again."""
    pool = connect("redis+sentinel://s1/m").connection_pool
    assert isinstance(pool, LeanSentinelPool)
    pool.is_master = is_master
    connection = pool.make_connection()
    assert isinstance(connection, FollowingConnection)
    disconnected: list[bool] = []

    async def refuse(self: object, *args: object, **kwargs: object) -> object:
        raise redis_exc.ResponseError(error)

    async def disconnect(*args: object, **kwargs: object) -> None:
        disconnected.append(True)

    monkeypatch.setattr(SentinelManagedConnection, "read_response", refuse)
    monkeypatch.setattr(connection, "disconnect", disconnect)
    with pytest.raises(becomes) as caught:
        await connection.read_response()
    assert type(caught.value) is becomes
    assert disconnected == ([True] if becomes is redis_exc.ConnectionError else [])


def test_min_other_sentinels_reaches_redis_py() -> None:
    pool = connect("redis+sentinel://s1,s2,s3/m?min_other_sentinels=1").connection_pool
    assert isinstance(pool, LeanSentinelPool)
    assert pool.sentinel_manager.min_other_sentinels == 1
