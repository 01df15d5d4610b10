"""Plugin storage: the memory, file and redis backends behind one JSON API, hostile keys and values."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.errors import BrokerError, PayloadTooLargeError
from service.keys import Keys
from service.plugins.storage import (
    MAX_KEY_LENGTH,
    FileBackend,
    MemoryBackend,
    PluginStorage,
    RedisBackend,
    StorageBackend,
)

BACKENDS = ["memory", "file", "redis"]


@pytest.fixture
def make_backend(tmp_path: Path, fake_redis: Redis) -> Callable[[str, str], StorageBackend]:
    memory: dict[str, dict[str, bytes]] = {}

    def make(kind: str, plugin: str = "p") -> StorageBackend:
        if kind == "memory":
            return MemoryBackend(memory.setdefault(plugin, {}))
        if kind == "file":
            return FileBackend(tmp_path / "storage" / plugin)
        return RedisBackend(fake_redis, Keys("ns").plugin_storage(plugin))

    return make


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, make_backend: Callable[[str, str], StorageBackend]) -> PluginStorage:
    return PluginStorage("p", make_backend(request.param, "p"), max_bytes=1024, loop=asyncio.get_running_loop())


async def test_put_get_delete_keys(storage: PluginStorage) -> None:
    assert await storage.get("missing") is None
    assert await storage.get("missing", default={"d": 1}) == {"d": 1}
    await storage.put("a", {"n": [1, 2.5, "é", None, True]})
    await storage.store("b", (1, 2))  # the seed's name; a tuple comes back a list (JSON)
    assert await storage.get("a") == {"n": [1, 2.5, "é", None, True]}
    assert await storage.get("b") == [1, 2]
    await storage.put("a", 0)
    assert await storage.get("a") == 0
    assert await storage.keys() == ["a", "b"]
    assert await storage.delete("a") is True
    assert await storage.delete("a") is False
    assert await storage.keys() == ["b"]


async def test_a_stored_value_is_a_copy(storage: PluginStorage) -> None:
    value = {"list": [1]}
    await storage.put("k", value)
    value["list"].append(2)
    assert await storage.get("k") == {"list": [1]}


@pytest.mark.parametrize("kind", BACKENDS)
async def test_each_plugin_has_its_own_values(kind: str, make_backend: Callable[[str, str], StorageBackend]) -> None:
    loop = asyncio.get_running_loop()
    mine = PluginStorage("a", make_backend(kind, "a"), max_bytes=1024, loop=loop)
    theirs = PluginStorage("b", make_backend(kind, "b"), max_bytes=1024, loop=loop)
    await mine.put("k", "a's")
    assert await theirs.get("k") is None
    assert await theirs.keys() == []


HOSTILE_KEYS = ["../x", "../../etc/passwd", "/abs", "a/b", ".", "..", ".hidden", "%2F", "nul\x00byte", "sp ace", "ü"]


async def test_hostile_keys_are_just_keys(storage: PluginStorage) -> None:
    for i, key in enumerate(HOSTILE_KEYS):
        await storage.put(key, i)
    for i, key in enumerate(HOSTILE_KEYS):
        assert await storage.get(key) == i
    assert await storage.keys() == sorted(HOSTILE_KEYS)


def test_file_names_stay_inside_the_plugins_folder(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "p")
    for key in HOSTILE_KEYS:
        path = backend.path_of(key)
        assert path.parent == tmp_path / "p", key
        assert not path.name.startswith("."), key
    assert backend.path_of("../x").name == "%2E.%2Fx.json"


async def test_hostile_keys_write_no_file_outside(tmp_path: Path) -> None:
    storage = PluginStorage("p", FileBackend(tmp_path / "root" / "p"), max_bytes=1024)
    for key in HOSTILE_KEYS:
        await storage.put(key, 1)
    assert _files_outside(tmp_path, tmp_path / "root" / "p") == []


def _files_outside(top: Path, folder: Path) -> list[Path]:
    return [p for p in top.rglob("*") if p.is_file() and p.parent != folder]


@pytest.mark.parametrize("key", ["", None, 3, b"bytes"])
async def test_keys_are_non_empty_strings(storage: PluginStorage, key: Any) -> None:
    with pytest.raises(TypeError, match="non-empty string"):
        await storage.put(key, 1)


async def test_keys_too_long_or_not_utf8_are_refused(storage: PluginStorage) -> None:
    await storage.put("k" * MAX_KEY_LENGTH, 1)
    with pytest.raises(ValueError, match=f"longer than {MAX_KEY_LENGTH}"):
        await storage.put("k" * (MAX_KEY_LENGTH + 1), 1)
    with pytest.raises(ValueError, match="lone surrogate"):
        await storage.get("\ud800")


def test_a_long_key_whose_file_name_would_not_fit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too long for a file name"):
        FileBackend(tmp_path).path_of("ü" * 50)  # 50 characters, 300 bytes of file name encoded


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (object(), r"\(value\): a object is not JSON"),
        ({"a": {1, 2}}, r"a: a set is not JSON"),
        ({"x": float("nan")}, r"x: nan is not JSON"),
        ({1: "int key"}, r"\(value\): key 1 is not JSON"),
        ([b"bytes"], r"0: a bytes is not JSON"),
    ],
)
async def test_values_that_are_not_json_are_refused(storage: PluginStorage, value: Any, where: str) -> None:
    with pytest.raises(TypeError, match=f"storage value for 'k' must be JSON: {where}"):
        await storage.put("k", value)
    assert await storage.keys() == []


async def test_values_over_the_size_limit_are_refused(storage: PluginStorage) -> None:
    with pytest.raises(PayloadTooLargeError, match="storage value for 'big'"):
        await storage.put("big", "x" * 2000)
    assert await storage.get("big") is None


async def test_sync_forms_from_a_thread(storage: PluginStorage) -> None:
    def in_thread() -> tuple[Any, list[str], bool]:
        storage.put_sync("t", {"from": "thread"})
        return storage.get_sync("t"), storage.keys_sync(), storage.delete_sync("t")

    assert await asyncio.to_thread(in_thread) == ({"from": "thread"}, ["t"], True)
    assert await storage.get("t") is None


async def test_sync_forms_on_the_loop_are_refused_not_deadlocked(storage: PluginStorage) -> None:
    with pytest.raises(RuntimeError, match="on the event loop, await"):
        storage.get_sync("k")


def test_sync_forms_without_a_loop_say_so() -> None:
    storage = PluginStorage("p", MemoryBackend(), max_bytes=1024)
    with pytest.raises(RuntimeError, match="need the worker's loop"):
        storage.put_sync("k", 1)


async def test_redis_backend_is_a_hash_per_plugin_in_the_namespace(fake_redis: Redis) -> None:
    key = Keys("ns").plugin_storage("render")
    assert key == "ns:storage:render"
    assert Keys("other").plugin_storage("render") != key
    storage = PluginStorage("render", RedisBackend(fake_redis, key), max_bytes=1024)
    await storage.put("k", {"a": 1})
    assert await fake_redis.type(key) == b"hash"
    # JSON on the wire, never pickle.
    assert await fake_redis.hgetall(key) == {b"k": b'{"a":1}'}  # type: ignore[misc]


async def test_redis_failures_are_broker_errors(fake_redis: Redis) -> None:
    await fake_redis.set("ns:storage:p", "a string, not a hash")
    storage = PluginStorage("p", RedisBackend(fake_redis, "ns:storage:p"), max_bytes=1024)
    with pytest.raises(BrokerError, match="reading plugin storage"):
        await storage.get("k")


async def test_file_writes_go_through_a_temporary_file_and_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "p"
    storage = PluginStorage("p", FileBackend(folder), max_bytes=1024)
    await storage.put("k", "old")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        renames.append((src, dst))
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        await storage.put("k", "new")
    [(src, dst)] = renames
    assert Path(src).parent == folder
    assert Path(src).name.startswith(".")
    assert Path(dst) == folder / "k.json"
    assert await storage.get("k") == "old"  # the old value is whole
    assert sorted(p.name for p in folder.iterdir()) == ["k.json"]  # no temporary file left
    monkeypatch.setattr(os, "replace", real_replace)
    await storage.put("k", "new")
    assert (folder / "k.json").read_bytes() == b'"new"'


async def test_file_backend_ignores_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / ".k.json.tmp").write_text("half")
    (folder / "notes.txt").write_text("x")
    storage = PluginStorage("p", FileBackend(folder), max_bytes=1024)
    assert await storage.keys() == []
