"""Key names, arq compatibility of our prefixes, and the JSON-only wire."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import arq.constants
import pytest

from service.arqformat import IN_PROGRESS_PREFIX, RESULT_PREFIX
from service.errors import PayloadTooLargeError
from service.keys import Keys, is_sharded_channel
from service.wire import WireError, check_size, dumps, loads


def test_arq_prefixes_match_arq() -> None:
    assert arq.constants.in_progress_key_prefix == IN_PROGRESS_PREFIX
    assert arq.constants.result_key_prefix == RESULT_PREFIX


def test_namespaces_isolate_every_name() -> None:
    a, b = Keys("a"), Keys("b")
    names: list[Callable[[Keys], str]] = [
        lambda k: k.job("x"),
        lambda k: k.job_channel("x"),
        lambda k: k.arq_result("x"),
        lambda k: k.arq_in_progress("x"),
        lambda k: k.queue("P"),
        lambda k: k.queue("P", "fast", "host1"),
        lambda k: k.registry_manifests(),
        lambda k: k.workers(),
        lambda k: k.worker("w"),
    ]
    for name in names:
        assert name(a) != name(b)
    assert a.arq_result("x") == "arq:result:a:x"
    assert a.job_id_from_arq(a.arq_job_id("x:y")) == "x:y"
    with pytest.raises(ValueError, match="not in namespace"):
        a.job_id_from_arq("b:x")
    assert a.queue("P", "default", "h") == "a:queue:default:P@h"


def test_wire_is_json_only() -> None:
    assert loads(dumps({"a": [1, "é"]})) == {"a": [1, "é"]}
    with pytest.raises(WireError):
        loads(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="Out of range float values"):
        dumps(float("nan"))
    with pytest.raises(TypeError):
        dumps({1, 2})


def test_size_limit() -> None:
    assert check_size("x", b"12", 2) == b"12"
    with pytest.raises(PayloadTooLargeError, match="3 bytes, over the limit of 2"):
        check_size("x", b"123", 2)


def test_on_a_cluster_every_key_of_a_job_shares_its_queue_sets_slot() -> None:
    from redis.crc import key_slot

    keys = Keys("ns", 6)
    queue = keys.queue("PluginB", "default", "vm")
    for job_id in ("a", "b", "order-17", "x" * 64):
        queue_set = keys.queue_of(queue, job_id)
        named = [
            keys.job(job_id), keys.job_stream(job_id), keys.checkpoint(job_id), keys.dead_letter(job_id),
            keys.dead_letters(job_id), keys.arq_result(job_id), keys.arq_in_progress(job_id),
            keys.idle_workers(queue_set), queue_set,
        ]  # fmt: skip
        tag = keys.job_tag(job_id)
        channels = [  # sharded: a script called with the job's keys SPUBLISHes them on that node
            keys.job_channel(job_id), keys.worker_channel("w1", tag), keys.wake_channel(tag),
            keys.job_channel_prefix(keys.set_tag(queue_set)) + job_id,
        ]  # fmt: skip
        assert all(is_sharded_channel(channel) for channel in channels)
        assert len({key_slot(name.encode()) for name in named + channels}) == 1, named + channels
        assert keys.job_id_from_arq(keys.arq_job_id(job_id)) == job_id
        assert keys.logical_queue(queue_set) == queue
        assert keys.queue_plugin(queue_set) == "PluginB"
    assert len(set(keys.queue_sets(queue))) == 6
    assert keys.every_queue_set([queue]) == keys.queue_sets(queue)
    # partition p hashes into the p-th sixth of the slots: an evenly split cluster gets them spread
    assert [key_slot(tag.encode()) * 6 // 16384 for tag in keys.tags] == list(range(6))
    with pytest.raises(ValueError, match="partition's tag"):
        keys.job_id_from_arq("ns:a")  # a plain-layout id in a cluster namespace


def test_on_a_cluster_only_the_broadcasts_are_classic_channels() -> None:
    keys = Keys("ns", 3)
    classic = [keys.cancel_channel(), keys.control_channel(), keys.control_acks_channel(), keys.wake_channel()]
    assert not any(is_sharded_channel(channel) for channel in classic)
    assert keys.wake_channels() == [keys.wake_channel(), *(keys.wake_channel(tag) for tag in keys.tags)]
    assert keys.worker_channels("w1") == [keys.worker_channel("w1", tag) for tag in keys.tags]
    events = {keys.event_channel(kind) for kind in ("job_failed", "worker_started")}
    assert all(is_sharded_channel(channel) for channel in events)
    assert len({keys.slot(channel) for channel in events}) == 1  # every kind on one node


def test_on_one_redis_the_names_have_no_tags() -> None:
    keys = Keys("ns")
    every = [keys.job_channel("a"), *keys.wake_channels(), *keys.worker_channels("w1"), keys.event_channel("k")]
    assert not any(is_sharded_channel(channel) for channel in every)
    assert keys.wake_channels() == ["ns:ch:wake"]
    assert keys.worker_channels("w1") == ["ns:ch:worker:w1"]
    assert keys.set_tag("ns:queue:default:P") == ""
    assert keys.job("a") == "ns:job:a"
    assert keys.queue_of("ns:queue:default:P", "a") == "ns:queue:default:P"
    assert keys.queue_sets("q") == ["q"]
    assert keys.dead_letter_indexes() == ["ns:dead"] == [keys.dead_letters("a")]
    assert keys.partition("a") == 0


def test_only_a_partition_tag_after_a_name_is_taken_off_a_queue_set() -> None:
    assert Keys.logical_queue_name("ns:queue:default:P{ns.3}") == "ns:queue:default:P"
    assert Keys.logical_queue_name("{}") == "{}"  # a hand-written record's queue: kept as it is
    assert Keys.logical_queue_name("{ns.3}") == "{ns.3}"
    assert Keys.logical_queue_name("ns:queue:default:P") == "ns:queue:default:P"
