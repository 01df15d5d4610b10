"""The test kit's own Redis Cluster (tests/clusterkit.py), checked through redis-py's ``RedisCluster``.

The kit builds the cluster without redis-cli and reshards by hand, so these check what redis-cli
would have guaranteed: keys written across the slots are read back after their slots moved under a
client that kept running (it follows ``ASK`` and ``MOVED``), a slot with more keys than one
``MIGRATE`` batch moves whole, and a half-migrated slot answers ``ASK`` for the keys already moved.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis as redis_sync
from redis.cluster import ClusterNode as SeedNode
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.clusterkit import MIGRATE_BATCH, ClusterSet

pytestmark = pytest.mark.cluster

PLAIN_KEYS = 1000
MOVED_SLOTS = 200
# More keys in one slot than one MIGRATE batch takes, so that slot needs several.
HOT_KEYS = MIGRATE_BATCH * 2 + 50


def _cluster_client(cluster: ClusterSet) -> RedisCluster:
    seeds = [SeedNode("127.0.0.1", port) for port in cluster.master_ports]  # type: ignore[no-untyped-call]
    client: RedisCluster = RedisCluster(startup_nodes=seeds, decode_responses=True, socket_timeout=5)
    return client


def _tag_in(slots: set[int]) -> str:
    """A hash tag whose slot is one of ``slots`` (found by trying names: ~80 tries for 200 of 16384)."""
    for n in range(1_000_000):
        if key_slot(f"hot{n}".encode()) in slots:
            return f"hot{n}"
    raise AssertionError("no hash tag found for the slots")


def _direct(port: int) -> redis_sync.Redis:
    """A plain (non-cluster) client of one node: it sees redirections as errors instead of following them."""
    return redis_sync.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)


@pytest.fixture
def cluster(server_binary: str) -> Iterator[ClusterSet]:
    """Three masters, one replica each."""
    with ClusterSet(masters=3, replicas=1, binary=server_binary) as started:
        yield started


@pytest.fixture
def bare_cluster(server_binary: str) -> Iterator[ClusterSet]:
    """Three masters, no replicas."""
    with ClusterSet(masters=3, binary=server_binary) as started:
        yield started


def test_reshard_under_a_running_client_keeps_every_key(cluster: ClusterSet) -> None:
    """Keys in every master's slots survive a reshard done while another client reads and writes."""
    source, target = cluster.master_ports[0], cluster.master_ports[1]
    assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster.master_ports) + "/0"
    to_move = set(cluster.slots_of(source)[:MOVED_SLOTS])
    tag = _tag_in(to_move)
    plain = {f"key:{i}": str(i) for i in range(PLAIN_KEYS)}
    hot = {f"{{{tag}}}:{i}": str(i) for i in range(HOT_KEYS)}
    writer = _cluster_client(cluster)
    for key, value in {**plain, **hot}.items():
        writer.set(key, value)
    assert {cluster.slot_owner(key_slot(key.encode())) for key in plain} == set(cluster.master_ports)
    assert any(key_slot(key.encode()) in to_move for key in plain)

    errors: list[str] = []
    written: list[str] = []
    stop = threading.Event()
    one_pass = threading.Event()

    def run_client() -> None:
        """Read every key and write new ones until told to stop, noting any wrong answer or error."""
        client = _cluster_client(cluster)
        try:
            n = 0
            while not stop.is_set():
                for key, value in plain.items():
                    got = client.get(key)
                    if got != value:
                        errors.append(f"{key}: {got!r} != {value!r}")
                    new_key = f"live:{n}"
                    client.set(new_key, str(n))
                    written.append(new_key)
                    n += 1
                one_pass.set()
        except redis_sync.RedisError as exc:
            errors.append(repr(exc))
        finally:
            one_pass.set()
            client.close()

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    assert one_pass.wait(30)
    try:
        moved = cluster.reshard(MOVED_SLOTS, source, target)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not errors
    assert moved == sorted(to_move)
    assert all(cluster.slot_owner(slot) == target for slot in moved)
    assert cluster.slot_owner(moved[-1] + 1) == source
    with _direct(target) as direct:
        on_target = direct.execute_command("CLUSTER", "GETKEYSINSLOT", key_slot(tag.encode()), HOT_KEYS * 2)
    assert set(hot) <= set(on_target)
    for key, value in {**plain, **hot}.items():
        assert writer.get(key) == value, key
    assert [writer.get(key) for key in written] == [key.removeprefix("live:") for key in written]
    writer.close()


def test_a_half_migrated_slot_answers_ask_then_moved(bare_cluster: ClusterSet) -> None:
    """Between the steps of a reshard: moved keys are ASKed for, new keys land on the target, then MOVED."""
    cluster = bare_cluster
    source, target = cluster.master_ports[2], cluster.master_ports[0]
    tag = _tag_in({cluster.slots_of(source)[0]})
    slot = key_slot(tag.encode())
    keys = [f"{{{tag}}}:{name}" for name in ("a", "b", "c")]
    client = _cluster_client(cluster)
    for key in keys:
        client.set(key, key)

    cluster.begin_migration(slot, source, target)
    assert cluster.migrate_keys(slot, source, target, limit=1) == 1
    with _direct(source) as direct:
        answers = []
        for key in keys:
            try:
                answers.append(direct.get(key))
            except redis_sync.ResponseError as exc:
                answers.append(str(exc).split()[0])
    assert answers.count("ASK") == 1
    assert all(answer in ("ASK", key) for key, answer in zip(keys, answers, strict=True))
    assert [client.get(key) for key in keys] == keys
    client.set(f"{{{tag}}}:d", "d")

    assert cluster.migrate_keys(slot, source, target) == 2
    cluster.finish_migration(slot, source, target)
    cluster.wait_settled()
    assert cluster.slot_owner(slot) == target
    with _direct(source) as direct, pytest.raises(redis_sync.ResponseError, match=r"^MOVED"):
        direct.get(keys[0])
    with _direct(target) as direct:
        assert direct.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 4
    assert [client.get(key) for key in keys] == keys
    assert client.get(f"{{{tag}}}:d") == "d"
    client.close()
