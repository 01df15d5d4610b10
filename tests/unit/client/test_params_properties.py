"""Params against manifests, as properties: a submit stores exactly what was validated, or refuses
with an actionq error and writes nothing.

Every example runs on a fresh fakeredis server (``asyncio.run`` inside the sync hypothesis test) with
the client of :func:`tests.unit.fakes.fake_client` (2 KiB payload limit), where the bundled plugins are
live as :func:`tests.unit.fakes.register` makes them (their manifests read once, not per example) and
one more manifest, ``Props``, whose arguments cover the type language (``any``, ``int``, ``str``,
``list``, ``dict``, a union).
"""

from __future__ import annotations

import asyncio
import math
import string
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import fakeredis
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from service.client.client import JobClient
from service.errors import (
    ActionQError,
    InvalidParamsError,
    UnknownActionError,
    UnknownPluginError,
)
from service.plugins.manifest import PluginManifest, load_manifest
from service.wire import MAX_DEPTH
from tests.conftest import BUNDLED_PLUGINS, REPO_ROOT
from tests.unit.fakes import fake_client, serving

T = TypeVar("T")

PROPS = PluginManifest.model_validate(
    {
        "name": "Props",
        "actions": [
            {
                "name": "echo",
                "arguments": {
                    "value": {"type": "any", "default": None},
                    "count": {"type": "int", "default": 0},
                    "label": {"type": "str", "default": ""},
                    "items": {"type": "list", "default": []},
                    "opts": {"type": "dict", "default": {}},
                    "maybe": {"type": "float | None", "default": None},
                },
            }
        ],
    }
)
ECHO_ARGS = PROPS.action("echo").argument_names()
BUNDLED = [load_manifest(REPO_ROOT / "plugins" / name, name) for name in BUNDLED_PLUGINS]
# The bundled InteropTarget: its it_sync_add takes two required ints, a and b.
INTEROP = next(m for m in BUNDLED if m.name == "InteropTarget")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For the cases a product bug makes fail (xfail): a few examples, no shrinking or explaining of the failure.
BUG_SETTINGS = settings(
    max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False
)

# -- values -------------------------------------------------------------------------------------
# Text (no surrogates: st.text's default), text that always holds a lone surrogate, and a mix of both.
UTF8_TEXT = st.text(max_size=12)
SURROGATE_TEXT = st.tuples(UTF8_TEXT, st.characters(categories=["Cs"]), UTF8_TEXT).map("".join)
TEXT = UTF8_TEXT | UTF8_TEXT | UTF8_TEXT | SURROGATE_TEXT


def json_ish(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """None, bools, ints, floats (NaN and ±inf included), ``text``, and lists and dicts of those."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
        max_leaves=16,
    )


JSON_ISH = json_ish(TEXT)
# Params as a caller passes them: by name (declared names and stray ones), or positional values.
# Stray names are text without lone surrogates: a surrogate in a top-level name is the bug of
# test_a_name_with_a_lone_surrogate_is_named (inside values and nested keys they are in).
DECLARED_PARAMS = st.dictionaries(st.sampled_from(ECHO_ARGS), JSON_ISH, max_size=4)
NAMED_PARAMS = st.dictionaries(st.sampled_from(ECHO_ARGS) | UTF8_TEXT, JSON_ISH, max_size=5)
# Well-typed params (any subset of the arguments, each of its type): mostly stored, for the round trip.
TYPED_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "value": JSON_ISH,
        "count": st.integers() | st.integers().map(str),
        "label": TEXT,
        "items": st.lists(JSON_ISH, max_size=3),
        "opts": st.dictionaries(TEXT, JSON_ISH, max_size=3),
        "maybe": st.none() | st.floats() | st.integers(-(2**53), 2**53),
    },
)
# A single value: positional, or a mapping by itself (of names without surrogates, as above).
PARAMS = TYPED_PARAMS | DECLARED_PARAMS | NAMED_PARAMS | st.lists(JSON_ISH, max_size=7) | json_ish(UTF8_TEXT)


# -- helpers ------------------------------------------------------------------------------------
def on_fake_redis(body: Callable[[JobClient], Awaitable[T]], *, max_payload_bytes: int | None = None) -> T:
    """Run ``body`` with a client (``fake_client``) on a fresh server where the plugins are live."""

    async def go() -> T:
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        client = fake_client(redis)
        if max_payload_bytes is not None:
            settings = client.settings.model_copy(update={"max_payload_bytes": max_payload_bytes})
            client = JobClient(redis, settings, owns_redis=False)
        try:
            # What `register(client, *BUNDLED_PLUGINS)` does, without re-reading the YAML every example.
            await client.registry.publish(serving(client.keys, [*BUNDLED, PROPS]), [*BUNDLED, PROPS])
            return await body(client)
        finally:
            await client.close()
            await redis.aclose()

    return asyncio.run(go())


async def keyspace(redis: aioredis.Redis) -> dict[bytes, Any]:
    """Every key with its type and whole value: what a refused submit must leave as it was."""
    dump: dict[bytes, Any] = {}
    for key in await redis.keys("*"):
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            value: Any = await redis.hgetall(key)  # type: ignore[misc]
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "string":
            value = await redis.get(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            value = sorted(await redis.smembers(key))  # type: ignore[misc]
        else:
            value = await redis.xrange(key)
        dump[key] = (kind, value)
    return dump


def same(got: Any, want: Any) -> bool:
    """Equal, and of the same JSON type at every level (an int is not a float, True is not 1)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, float) and math.isnan(want):
        return math.isnan(got)
    return bool(got == want)


def names_a_field(exc: InvalidParamsError, params: Mapping[str, Any]) -> bool:
    """Every FieldError names a key of ``params`` (or a dotted path under one)."""
    return bool(exc.errors) and all(
        any(e.field == key or e.field.startswith(f"{key}.") for key in params) for e in exc.errors
    )


def expected_params(manifest: PluginManifest, action: str, params: Any) -> dict[str, Any]:
    """What the manifest makes of ``params`` (bound if positional, then validated): what must be stored."""
    if not isinstance(params, Mapping):
        params = manifest.bind_positional(action, params if isinstance(params, list) else [params])
    return manifest.validate_params(action, params)


async def submit_or_refuse(
    client: JobClient, plugin: str, manifest: PluginManifest, action: str, params: Any
) -> dict[str, Any] | ActionQError:
    """Submit; on success check the stored params are the validated ones, on refusal that nothing changed.

    Anything that is not an :class:`ActionQError` (pydantic's errors, RecursionError, TypeError, ...)
    propagates and fails the test.
    """
    before = await keyspace(client.redis)
    refused: ActionQError | None
    try:
        handle = await client.submit(plugin, action, params)
    except ActionQError as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert not isinstance(refused, UnknownPluginError | UnknownActionError), refused  # the set-up is wrong
        assert await keyspace(client.redis) == before, f"a refused submit wrote to Redis: {refused}"
        assert not await client.redis.keys(f"{client.keys.namespace}:job:*")
        return refused
    stored = (await handle.record()).request.params
    want = expected_params(manifest, action, params)
    assert same(stored, want), (stored, want)
    assert await client.redis.exists(client.keys.job(handle.job_id))
    return stored


# -- arbitrary values ---------------------------------------------------------------------------
@settings(SETTINGS, max_examples=60)
@given(params=PARAMS)
def test_any_params_are_stored_as_validated_or_refused_with_an_actionq_error(params: Any) -> None:
    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "Props", PROPS, "echo", params)
        event(f"outcome: {type(outcome).__name__}")
        if isinstance(outcome, InvalidParamsError) and isinstance(params, Mapping):
            assert names_a_field(outcome, params), outcome.errors
        if isinstance(outcome, dict) and isinstance(params, Mapping) and "value" in params:
            assert same(outcome["value"], params["value"])  # an `any` argument is stored as given

    on_fake_redis(body)


@SETTINGS
@given(value=JSON_ISH)
def test_non_finite_floats_anywhere_are_refused_naming_the_path(value: Any) -> None:
    params = {"value": {"inner": [value, math.nan]}}

    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "Props", PROPS, "echo", params)
        assert isinstance(outcome, InvalidParamsError)
        assert names_a_field(outcome, params)
        assert outcome.errors[0].field.startswith("value.inner.")

    on_fake_redis(body)


def nested(depth: int, leaf: Any, kinds: list[bool]) -> Any:
    """``leaf`` inside ``depth`` containers, each a list (True) or a one-key dict (False)."""
    value = leaf
    for i in range(depth):
        value = [value] if kinds[i % len(kinds)] else {"k": value}
    return value


@SETTINGS
@given(
    depth=st.integers(0, 1500),
    leaf=st.sampled_from([1, "s", None, [], {}]),
    kinds=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_deep_values_are_stored_or_refused_never_a_recursion_error(depth: int, leaf: Any, kinds: list[bool]) -> None:
    params = {"value": nested(depth, leaf, kinds)}

    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "Props", PROPS, "echo", params)  # stored: it reads back
        if isinstance(outcome, InvalidParamsError):
            assert outcome.errors[0].field.startswith("value")
            assert "nested" in outcome.errors[0].message
        # The limit is MAX_DEPTH, give or take the level of the leaf.
        if depth > MAX_DEPTH:
            assert isinstance(outcome, InvalidParamsError)
        if depth < MAX_DEPTH - 1:
            assert isinstance(outcome, dict)

    on_fake_redis(body)


# Around the limit, and 199: at HEAD (MAX_DEPTH = 200) a value 199 levels deep was written and its record
# could not be read back (the request wraps params in two more levels; pydantic's JSON reader stops at 200).
@pytest.mark.parametrize("leaf", [1, {}])
@pytest.mark.parametrize("depth", sorted({*range(MAX_DEPTH - 2, MAX_DEPTH + 3), 197, 198, 199, 200, 201}))
def test_depth_at_the_limit_is_either_refused_or_readable(depth: int, leaf: Any) -> None:
    params = {"value": nested(depth, leaf, [True])}
    on_fake_redis(lambda client: submit_or_refuse(client, "Props", PROPS, "echo", params))


@SETTINGS
@given(value=JSON_ISH, text=SURROGATE_TEXT, arg=st.sampled_from(["value", "label", "items", "opts"]))
def test_lone_surrogates_anywhere_are_refused_naming_the_path(value: Any, text: str, arg: str) -> None:
    # In a str argument, in an `any` one, in a list, and as a dict key.
    wrapped = {"label": text, "value": [value, text], "items": [text], "opts": {text: value}}[arg]
    params = {arg: wrapped}

    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "Props", PROPS, "echo", params)
        assert isinstance(outcome, InvalidParamsError), outcome
        assert names_a_field(outcome, params)

    on_fake_redis(body)


# At HEAD an int of more than 4300 digits passed validation and was written (pydantic serializes it),
# and then its record could not be read (pydantic's JSON reader refuses it: "number out of range").
@SETTINGS
@given(digits=st.integers(4150, 4450), arg=st.sampled_from(["value", "count"]), negative=st.booleans())
def test_huge_ints_are_refused_naming_the_field_or_read_back(digits: int, arg: str, negative: bool) -> None:
    params = {arg: (-1 if negative else 1) * 10 ** (digits - 1)}

    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "Props", PROPS, "echo", params)  # stored: it reads back
        if isinstance(outcome, InvalidParamsError):
            assert [e.field for e in outcome.errors] == [arg]
        else:
            assert isinstance(outcome, dict)  # not refused for its size: the limit below is room enough
        if digits > 4300:
            assert isinstance(outcome, InvalidParamsError)

    # A payload limit the int fits under (the fake client's 2 KiB would refuse it for its size).
    on_fake_redis(body, max_payload_bytes=65536)


# -- typed arguments ----------------------------------------------------------------------------
NON_INTS = st.one_of(
    st.floats().filter(lambda f: not f.is_integer()),  # fractions, NaN and ±inf
    st.text(alphabet=string.ascii_letters + " -", max_size=10),  # never an integer's text
    SURROGATE_TEXT,
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


@SETTINGS
@given(a=st.integers(), b=st.integers(), a_as_text=st.booleans())
def test_int_arguments_accept_ints_and_their_text(a: int, b: int, a_as_text: bool) -> None:
    async def body(client: JobClient) -> None:
        params: dict[str, Any] = {"a": str(a) if a_as_text else a, "b": b}
        stored = await submit_or_refuse(client, "InteropTarget", INTEROP, "it_sync_add", params)
        assert isinstance(stored, dict)
        assert same(stored, {"a": a, "b": b})  # "6" is stored as the int 6

    on_fake_redis(body)


@SETTINGS
@given(a=NON_INTS, b=st.integers())
def test_int_arguments_refuse_non_ints_naming_the_field(a: Any, b: int) -> None:
    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "InteropTarget", INTEROP, "it_sync_add", {"a": a, "b": b})
        assert isinstance(outcome, InvalidParamsError)
        assert [e.field for e in outcome.errors] == ["a"]
        assert outcome.plugin == "InteropTarget"

    on_fake_redis(body)


@SETTINGS
@given(b=st.integers(), extra=UTF8_TEXT.filter(lambda k: k not in ("a", "b")))
def test_missing_and_unknown_arguments_are_named(b: int, extra: str) -> None:
    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "InteropTarget", INTEROP, "it_sync_add", {"b": b, extra: 1})
        assert isinstance(outcome, InvalidParamsError)
        assert {e.field for e in outcome.errors} == {"a", extra}

    on_fake_redis(body)


@SETTINGS
@given(b=st.integers(), extra=SURROGATE_TEXT)
def test_a_name_with_a_lone_surrogate_is_named(b: int, extra: str) -> None:
    async def body(client: JobClient) -> None:
        outcome = await submit_or_refuse(client, "InteropTarget", INTEROP, "it_sync_add", {"b": b, extra: 1})
        assert isinstance(outcome, InvalidParamsError)  # an actionq error, nothing written
        assert {e.field for e in outcome.errors} == {extra}  # named (it is refused before validation)

    on_fake_redis(body)
