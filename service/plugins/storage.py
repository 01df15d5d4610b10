"""Plugin storage: ``self.storage``, JSON values by string key, kept per plugin (seed 002).

::

    await self.storage.put("last_run", {"at": 1700000000, "items": 3})
    state = await self.storage.get("last_run", default={})
    await self.storage.delete("last_run")        # True if it was there
    names = await self.storage.keys()
    self.storage.put_sync("k", 1)                # from a plain ``def`` action's thread

The backend is chosen in the settings (``storage:``, per deployment, or per plugin in its
``plugins:`` entry; :class:`~service.settings.StorageSettings`):

``redis`` (the default)
    a hash per plugin, ``<ns>:storage:<plugin>`` (:meth:`service.keys.Keys.plugin_storage`), on the
    worker's connection: every worker serving the plugin sees the same values, and they outlive
    restarts and reloads.
``file``
    one JSON file per key under ``<path>/<plugin>/``, written atomically (a temporary file in the
    same folder, then a rename): a reader never sees half a value. The key is percent-encoded into
    the file name, so no key can name another folder (``../x`` is the file ``%2E.%2Fx.json``).
``memory``
    this worker process only, gone when it exits (kept across a reload of the plugin).

Values are JSON (never pickle): what comes back is what JSON makes of the value (a tuple comes
back a list). A value JSON cannot carry is a ``TypeError`` naming where in it; one larger than
``max_payload_bytes`` a :class:`~service.errors.PayloadTooLargeError`. Keys are non-empty strings
of at most :data:`MAX_KEY_LENGTH` characters. Redis failures are :class:`~service.errors.BrokerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote, unquote

from redis.asyncio import Redis

from service.redis.connection import broker_errors
from service.wire import bad_key, check_size, dumps, loads, not_json

__all__ = [
    "MAX_KEY_LENGTH",
    "FileBackend",
    "MemoryBackend",
    "PluginStorage",
    "RedisBackend",
    "StorageBackend",
]

MAX_KEY_LENGTH: Final = 200
"""Longest key, in characters: its file name (percent-encoded, plus ``.json``) must fit most file systems' 255 bytes."""
_SUFFIX: Final = ".json"
_MAX_FILE_NAME: Final = 255


class StorageBackend(Protocol):
    """Where one plugin's serialized values live; keys are already checked."""

    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def keys(self) -> list[str]: ...


class MemoryBackend:
    """Values in a dict of this process (shared by the loads of one plugin, so a reload keeps them)."""

    name = "memory"

    def __init__(self, values: dict[str, bytes] | None = None) -> None:
        self._values = {} if values is None else values

    async def get(self, key: str) -> bytes | None:
        return self._values.get(key)

    async def put(self, key: str, data: bytes) -> None:
        self._values[key] = data

    async def delete(self, key: str) -> bool:
        return self._values.pop(key, None) is not None

    async def keys(self) -> list[str]:
        return sorted(self._values)


class RedisBackend:
    """Values in the plugin's hash (``hash_key``), one field per key."""

    name = "redis"

    def __init__(self, redis: Redis, hash_key: str) -> None:
        self._redis = redis
        self._hash = hash_key

    async def get(self, key: str) -> bytes | None:
        with broker_errors("reading plugin storage"):
            raw: bytes | None = await self._redis.hget(self._hash, key)  # type: ignore[misc]
        return raw

    async def put(self, key: str, data: bytes) -> None:
        with broker_errors("writing plugin storage"):
            await self._redis.hset(self._hash, mapping={key: data})  # type: ignore[misc]

    async def delete(self, key: str) -> bool:
        with broker_errors("deleting from plugin storage"):
            removed: int = await self._redis.hdel(self._hash, key)  # type: ignore[misc]
        return removed > 0

    async def keys(self) -> list[str]:
        with broker_errors("listing plugin storage"):
            raw: list[bytes] = await self._redis.hkeys(self._hash)  # type: ignore[misc]
        return sorted(k.decode() for k in raw)


class FileBackend:
    """A JSON file per key in ``folder``, replaced atomically; file work runs in a thread, off the loop."""

    name = "file"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path_of(self, key: str) -> Path:
        """The file of ``key``: percent-encoded, so it is always a plain name inside :attr:`folder`."""
        name = quote(key, safe="")
        if name.startswith("."):  # no hidden files: those names are the temporary files'
            name = "%2E" + name[1:]
        name += _SUFFIX
        if len(name.encode()) > _MAX_FILE_NAME:
            raise ValueError(f"storage key {key[:40]!r}... is too long for a file name once encoded")
        return self.folder / name

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._read, self.path_of(key))

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self.path_of(key), data)

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._remove, self.path_of(key))

    async def keys(self) -> list[str]:
        return await asyncio.to_thread(self._list)

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, path: Path, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before the rename makes it the value
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _list(self) -> list[str]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(unquote(n.removesuffix(_SUFFIX)) for n in names if n.endswith(_SUFFIX) and n[0] != ".")


class PluginStorage:
    """One plugin's ``self.storage``: JSON values by string key, async, with blocking forms for threads."""

    def __init__(
        self, plugin: str, backend: StorageBackend, *, max_bytes: int, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.plugin = plugin
        self.backend = backend
        self._max_bytes = max_bytes
        self._loop = loop

    def __repr__(self) -> str:
        return f"PluginStorage(plugin={self.plugin!r}, backend={self.backend.name!r})"

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` if there is none."""
        raw = await self.backend.get(_checked_key(key))
        return default if raw is None else loads(raw)

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``, replacing what was there."""
        await self.backend.put(_checked_key(key), self._serialized(key, value))

    store = put
    """Seed 002's name of :meth:`put` (``await self.storage.store(key, data)``)."""

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        return await self.backend.delete(_checked_key(key))

    async def keys(self) -> list[str]:
        """Every key stored, sorted."""
        return await self.backend.keys()

    def get_sync(self, key: str, default: Any = None, timeout: float = 30.0) -> Any:
        """:meth:`get` for a plain ``def`` action (blocks its thread, never the loop)."""
        return self._blocking(self.get(key, default), timeout)

    def put_sync(self, key: str, value: Any, timeout: float = 30.0) -> None:
        """:meth:`put` for a plain ``def`` action."""
        self._blocking(self.put(key, value), timeout)

    def delete_sync(self, key: str, timeout: float = 30.0) -> bool:
        """:meth:`delete` for a plain ``def`` action."""
        return bool(self._blocking(self.delete(key), timeout))

    def keys_sync(self, timeout: float = 30.0) -> list[str]:
        """:meth:`keys` for a plain ``def`` action."""
        keys: list[str] = self._blocking(self.keys(), timeout)
        return keys

    def _serialized(self, key: str, value: Any) -> bytes:
        problem = not_json(value)
        if problem is not None:
            where, what = problem
            raise TypeError(f"storage value for {key!r} must be JSON: {where}: {what}")
        return check_size(f"storage value for {key!r}", dumps(value), self._max_bytes)

    def _blocking(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run ``coro`` on the worker's loop from another thread and wait for it."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is loop:
            coro.close()
            raise RuntimeError("storage *_sync calls block: on the event loop, await get/put/delete/keys")
        if loop is None:
            coro.close()
            raise RuntimeError("storage *_sync calls need the worker's loop (await get/put/delete/keys instead)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def _checked_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a storage key is a non-empty string, not {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage key {key[:40]!r}... is longer than {MAX_KEY_LENGTH} characters")
    problem = bad_key(key)
    if problem:
        raise ValueError(f"storage {problem}")
    return key
