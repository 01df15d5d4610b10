"""Command-line params, as properties: ``key=value`` and ``key:=json`` strings parse to the params an
independent model of the convention expects, or are refused with exit code 2 and a one-line error.

``actionq submit`` has no ``--params`` option: params are only the ``key=value`` / ``key:=json``
arguments (:func:`service.cli.jobs.parse_params`). The parsing is checked directly, and end to end:
``actionq submit`` run by typer's CliRunner with ``JobClient.connect`` patched to give a client on
fakeredis (``--no-validate``, so the params are stored as parsed), the stored request read back.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import fakeredis
import pytest
import typer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from service.cli import app
from service.cli.app import err as cli_err
from service.cli.jobs import parse_params
from service.client.client import JobClient
from service.client.store import JobStore
from service.keys import Keys
from service.models import JobRecord
from service.plugins.manifest import PluginManifest
from service.plugins.registry import Registry
from service.settings import Settings
from tests.unit.fakes import serving

NAMESPACE = "cli"
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the convention, modelled -------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One command-line param: its text and the (key, value) it must give; for one that must be refused,
    the key its error names ('' when the error quotes the whole text instead)."""

    text: str
    key: str
    value: Any = None


# Text: without surrogates (st.text's default) mostly, sometimes with a lone surrogate (which argv
# bytes that are not UTF-8 decode to, and which a JSON "\ud800" escape gives).
UTF8_TEXT = st.text(max_size=16)
SURROGATE_TEXT = st.tuples(UTF8_TEXT, st.characters(categories=["Cs"]), UTF8_TEXT).map("".join)
TEXT = st.one_of(UTF8_TEXT, UTF8_TEXT, UTF8_TEXT, UTF8_TEXT, UTF8_TEXT, SURROGATE_TEXT)
JSON_ISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
PLAIN_KEYS = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=10)
# Keys are text without '=' (the first '=' ends the key): any such text for the parsing, printable text
# for the CLI runs (a key that looks like rich markup has test_a_key_that_looks_like_markup_... of its own).
ANY_KEYS = st.text(st.characters(exclude_characters="="), min_size=1, max_size=10)
PRINTABLE_KEYS = st.text(
    st.characters(categories=["L", "N", "P", "S", "Zs"], exclude_characters="="), min_size=1, max_size=10
)


def string_pairs(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Pair]:
    """``key=value``: the value is the text after the first '=', whatever it holds (more '=', ':=', ...).
    A key ending in ':' would make ``key:=value``, a JSON pair: not a string pair."""
    return st.builds(
        lambda k, v: Pair(f"{k}={v}", k, v),
        keys.filter(lambda k: not k.endswith(":")),
        TEXT,
    )


@st.composite
def json_text(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON written in any of the ways json can write it (Python's NaN and Infinity too)."""
    indent = draw(st.none() | st.integers(0, 2))
    separators = draw(st.sampled_from([None, (",", ":"), (" , ", " : ")]))
    return json.dumps(value, ensure_ascii=draw(st.booleans()), indent=indent, separators=separators)


@st.composite
def json_pairs(draw: st.DrawFn, keys: st.SearchStrategy[str]) -> Pair:
    """``key:=json``: the value is the JSON after the first ':=' (a key may hold ':' but no '=')."""
    key, value = draw(keys), draw(JSON_ISH)
    return Pair(f"{key}:={draw(json_text(value))}", key, value)


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def bad_pairs(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Pair]:
    """Refused: no '=' at all, nothing before the first '=', or ``key:=`` followed by what is not JSON."""
    no_equals = st.text(st.characters(exclude_characters="="), max_size=16).map(lambda t: Pair(t, ""))
    no_key = st.text(max_size=16).map(lambda t: Pair(f"={t}", ""))
    not_json = st.builds(lambda k, t: Pair(f"{k}:={t}", k), keys, st.text(max_size=12).filter(lambda t: not is_json(t)))
    return no_equals | no_key | not_json


def expected(pairs: list[Pair]) -> dict[str, Any]:
    """The params of valid ``pairs``: one per key, the last given wins."""
    params: dict[str, Any] = {}
    for pair in pairs:
        params[pair.key] = pair.value
    return params


def same(got: Any, want: Any) -> bool:
    """Equal, and of the same JSON type at every level (NaN equal to NaN)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, float) and math.isnan(want):
        return math.isnan(got)
    return bool(got == want)


def is_utf8(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def not_json(value: Any) -> bool:
    """True if JSON cannot carry ``value``: NaN or ±Infinity, or a lone surrogate in a string or a key."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        return not is_utf8(value)
    if isinstance(value, dict):
        return any(not is_utf8(k) or not_json(v) for k, v in value.items())
    if isinstance(value, list):
        return any(not_json(v) for v in value)
    return False


# -- parse_params directly ----------------------------------------------------------------------
@settings(SETTINGS, max_examples=100)
@given(pairs=st.lists(string_pairs(ANY_KEYS) | json_pairs(ANY_KEYS), max_size=6))
def test_valid_pairs_parse_to_the_expected_params(pairs: list[Pair]) -> None:
    got = parse_params([p.text for p in pairs])
    assert same(got, expected(pairs))


@settings(SETTINGS, max_examples=100)
@given(
    before=st.lists(string_pairs(ANY_KEYS) | json_pairs(ANY_KEYS), max_size=3),
    bad=bad_pairs(ANY_KEYS),
    after=st.lists(string_pairs(ANY_KEYS) | json_pairs(ANY_KEYS) | bad_pairs(ANY_KEYS), max_size=3),
)
def test_a_bad_pair_is_refused_naming_it(before: list[Pair], bad: Pair, after: list[Pair]) -> None:
    with pytest.raises(typer.BadParameter) as info:
        parse_params([p.text for p in [*before, bad, *after]])
    message = info.value.format_message()
    assert f"{bad.key}: " in message if bad.key else repr(bad.text) in message  # the first bad pair is named


# -- end to end: actionq submit on fakeredis ----------------------------------------------------
# No ACTIONQ_* variable of the caller's environment, a wide terminal (so that rich wraps nothing), no colour.
ENV: dict[str, str | None] = {
    **{name: None for name in os.environ if name.startswith("ACTIONQ_")},
    "COLUMNS": "4000",
    "NO_COLOR": "1",
    "FORCE_COLOR": None,
}


@contextmanager
def fake_connect(server: fakeredis.FakeServer) -> Iterator[None]:
    """``JobClient.connect`` gives a client on ``server``; logging is left as it is (no handler swap)."""

    async def connect(
        cls: type[JobClient],
        redis_url: str | None = None,
        *,
        namespace: str | None = None,
        settings: Settings | None = None,
    ) -> JobClient:
        assert settings is not None
        assert settings.namespace == NAMESPACE
        return cls(fakeredis.FakeAsyncRedis(server=server), settings)

    # The CLI's stderr console fixes its width when it is made if COLUMNS is set then (80 under xdist):
    # as wide as ENV's here, so that rich wraps no message (a pipe without COLUMNS wraps them at 80).
    with (
        mock.patch.object(JobClient, "connect", classmethod(connect)),
        mock.patch("service.cli.app.configure_logging"),
        mock.patch.object(cli_err, "_width", int(ENV["COLUMNS"] or 0)),
    ):
        yield


def submit(server: fakeredis.FakeServer, params: list[str], *, validate: bool = False) -> Result:
    """``actionq submit P a PARAMS...`` (``--no-validate`` unless ``validate``: then P's manifest is live)."""
    if validate:
        asyncio.run(publish(server))
    check = "--validate" if validate else "--no-validate"
    argv = ["--redis-url", "redis://fake", "--namespace", NAMESPACE, "submit", "P", "a", check, "--", *params]
    with fake_connect(server):
        return CliRunner().invoke(app, argv, env=ENV)


# With validation: P.a takes an int `n` and a str `s`.
P = PluginManifest.model_validate({"name": "P", "actions": [{"name": "a", "arguments": {"n": "int", "s": "str"}}]})


async def publish(server: fakeredis.FakeServer) -> None:
    redis = fakeredis.FakeAsyncRedis(server=server)
    try:
        await Registry(redis, Keys(NAMESPACE), heartbeat_s=5).publish(serving(Keys(NAMESPACE), [P]), [P])
    finally:
        await redis.aclose()


def read_back(server: fakeredis.FakeServer, job_id: str) -> JobRecord | None:
    async def go() -> JobRecord | None:
        redis = fakeredis.FakeAsyncRedis(server=server)
        try:
            return await JobStore(redis, Keys(NAMESPACE)).get(job_id)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def job_keys(server: fakeredis.FakeServer) -> list[bytes]:
    async def go() -> list[bytes]:
        redis = fakeredis.FakeAsyncRedis(server=server)
        try:
            keys: list[bytes] = await redis.keys(f"{NAMESPACE}:job:*")
            return keys
        finally:
            await redis.aclose()

    return asyncio.run(go())


def error_line(result: Result) -> str:
    """The refusal's message: exit 2, no traceback, and exactly one line once typer's frame is taken off."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an exception the CLI let out
    assert "Traceback" not in result.output
    lines = [line.strip(" │╭╮╰╯─") for line in result.stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Usage:", "Try 'actionq submit --help'", "Error"))]
    assert len(lines) == 1, result.stderr
    return lines[0]


@SETTINGS
@given(pairs=st.lists(string_pairs(PRINTABLE_KEYS) | json_pairs(PRINTABLE_KEYS), min_size=1, max_size=5))
def test_submit_stores_the_params_parsed_or_refuses_non_json_in_one_line(pairs: list[Pair]) -> None:
    server = fakeredis.FakeServer()
    result = submit(server, [p.text for p in pairs])
    want = expected(pairs)
    if not_json(want):  # NaN, ±Infinity, lone surrogates parse, but JSON cannot carry them: refused, nothing written
        event("refused: not JSON")
        line = error_line(result)
        assert line.startswith("error: invalid params for P.a: ")
        assert "is not JSON" in line
        assert job_keys(server) == []
        return
    event("stored")
    assert result.exit_code == 0, (result.output, result.exception)
    job_id = result.stdout.strip()
    record = read_back(server, job_id)
    assert record is not None
    assert same(record.request.params, want), (record.request.params, want)
    assert (record.request.plugin, record.request.action) == ("P", "a")


@SETTINGS
@given(
    good=st.lists(string_pairs(PLAIN_KEYS) | json_pairs(PLAIN_KEYS), max_size=2),
    bad=bad_pairs(PLAIN_KEYS),
)
def test_submit_refuses_a_bad_pair_with_exit_2_and_one_line(good: list[Pair], bad: Pair) -> None:
    server = fakeredis.FakeServer()
    result = submit(server, [*(p.text for p in good), bad.text])
    line = error_line(result)
    assert line.startswith("Invalid value for PARAMS: ")
    if bad.key and bad.text.startswith(f"{bad.key}:="):
        assert line.startswith(f"Invalid value for PARAMS: {bad.key}: ")
        assert "is not JSON" in line
    else:
        assert "is not key=value or key:=json" in line
    assert job_keys(server) == []


@SETTINGS
@given(n=st.integers(), s=UTF8_TEXT, order=st.booleans())
def test_with_validation_key_value_text_is_converted_to_the_declared_type(n: int, s: str, order: bool) -> None:
    server = fakeredis.FakeServer()
    pairs = [f"n={n}", f"s={s}"]
    result = submit(server, pairs if order else pairs[::-1], validate=True)
    assert result.exit_code == 0, (result.output, result.exception)
    record = read_back(server, result.stdout.strip())
    assert record is not None
    assert same(record.request.params, {"n": n, "s": s})  # "n=6" is the int 6; "s=6" stays the text "6"


@settings(SETTINGS, max_examples=10)
@given(
    text=st.text(string.ascii_letters, min_size=1, max_size=12),
    # Not an int even to lax validation (which takes true, 6.0 and "6"); NaN and ±Infinity are refused too.
    json_value=st.none()
    | st.floats().filter(lambda f: not f.is_integer())
    | st.lists(st.integers(), max_size=2)
    | st.text(string.ascii_letters, max_size=5),
)
def test_with_validation_a_value_of_the_wrong_type_exits_2_naming_the_field(text: str, json_value: Any) -> None:
    server = fakeredis.FakeServer()
    for pair in (f"n={text}", f"n:={json.dumps(json_value)}"):
        line = error_line(submit(server, [pair, "s=ok"], validate=True))
        assert line.startswith("error: invalid params for P.a: n: ")
    assert job_keys(server) == []


# -- what the CLI cannot read or print as it is ----------------------------------------------------
# At HEAD these let a traceback out (exit 1): parse_params caught only JSONDecodeError (json.loads raises
# RecursionError for deep nesting, a plain ValueError for an int of over 4300 digits), and the CLI printed
# errors as rich markup (a key like '[/x]' raised MarkupError; '[bold]' was eaten).
UNREADABLE_JSON = st.one_of(
    st.builds(lambda n, closed: "[" * n + ("]" * n if closed else ""), st.integers(2_000, 20_000), st.booleans()),
    st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(2_000, 20_000)),
    st.integers(4301, 6000).map(lambda digits: "7" * digits),
)


@SETTINGS
@given(key=PLAIN_KEYS, raw=UNREADABLE_JSON)
def test_json_that_cannot_be_read_is_refused_naming_the_key(key: str, raw: str) -> None:
    with pytest.raises(typer.BadParameter) as info:
        parse_params([f"{key}:={raw}"])
    assert f"{key}: " in info.value.format_message()


@settings(SETTINGS, max_examples=10)
@given(key=PLAIN_KEYS, raw=UNREADABLE_JSON)
def test_json_that_cannot_be_read_exits_2_in_one_short_line(key: str, raw: str) -> None:
    server = fakeredis.FakeServer()
    line = error_line(submit(server, [f"{key}:={raw}"]))
    assert line.startswith(f"Invalid value for PARAMS: {key}: ")
    assert len(line) < 500  # not the thousands of characters it was given
    assert job_keys(server) == []


@pytest.mark.parametrize("pair", ["x=\udcff", "x=a\ud800b", 'x:="\\ud800"', 'x:=["ok", {"k": "\\udfff"}]'])
def test_a_lone_surrogate_is_refused_with_exit_2(pair: str) -> None:
    """Argv bytes that are not UTF-8 decode to lone surrogates; a JSON escape gives one from pure ASCII."""
    line = error_line(submit(fakeredis.FakeServer(), [pair]))
    assert line.startswith("error: invalid params for P.a: x")
    assert "lone surrogate" in line


MARKUP_KEYS = st.sampled_from(["[/x]", "a[/]", "[/red]", "[bold]b[/bold]", "[red]", ":thumbs_up:"]) | st.text(
    "[]/:#@ab", min_size=1, max_size=10
)


@SETTINGS
@given(key=MARKUP_KEYS, refused_by=st.sampled_from(["NaN", "["]))
def test_a_key_that_looks_like_markup_is_printed_as_it_is(key: str, refused_by: str) -> None:
    # NaN: refused by the client (an actionq error the CLI prints); '[': by the parsing (typer prints it).
    line = error_line(submit(fakeredis.FakeServer(), [f"{key}:={refused_by}"]))
    assert f" {key}: " in line, line
