"""Job records read back, as properties: whatever a record's hash holds, reading it gives a JobRecord
or a RecordUnreadableError naming the field, never another exception; and a record written by the
real submit path reads back as what was submitted.

Arbitrary hashes are read twice: by :func:`parse_record` directly, and through Redis (written to
``<ns>:job:<id>`` on fakeredis, read by ``JobClient.job(id).record()``, that is the read script).
Every example runs on a fresh fakeredis server (``asyncio.run`` inside the sync hypothesis test).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import fakeredis
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from service.client.client import JobClient
from service.client.store import parse_final, parse_record
from service.errors import ActionQError, ErrorInfo, JobNotFoundError, RecordUnreadableError
from service.keys import Keys
from service.models import (
    ID_PATTERN,
    NAME_PATTERN,
    AttemptInfo,
    JobRecord,
    JobRequest,
    JobState,
    ProgressUpdate,
)
from service.plugins.manifest import PluginManifest
from tests.unit.fakes import fake_client, serving

T = TypeVar("T")
JOB_ID = "rec-1"
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# For the cases a product bug makes fail (xfail): a few examples, no shrinking or explaining of the failure.
BUG_SETTINGS = settings(
    max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False
)
REC = PluginManifest.model_validate(
    {"name": "Rec", "actions": [{"name": "echo", "arguments": {"value": "any", "n": {"type": "int", "default": 0}}}]}
)


def on_fake_redis(body: Callable[[JobClient], Awaitable[T]], *, max_payload_bytes: int | None = None) -> T:
    """Run ``body`` with :func:`fake_client` on a fresh server where ``Rec`` is live."""

    async def go() -> T:
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        client = fake_client(redis)
        if max_payload_bytes is not None:
            settings = client.settings.model_copy(update={"max_payload_bytes": max_payload_bytes})
            client = JobClient(redis, settings, owns_redis=False)
        try:
            await client.registry.publish(serving(client.keys, [REC]), [REC])
            return await body(client)
        finally:
            await client.close()
            await redis.aclose()

    return asyncio.run(go())


# -- hash contents ------------------------------------------------------------------------------
TEXT = st.text(max_size=16)
JSON_ISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


def utf8(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda s: s.encode())


# What can sit in any field: arbitrary bytes (invalid UTF-8 too), text, numbers' text, JSON (also
# JSON that only Python writes: NaN), and JSON objects of the right keys with values of any type.
GARBAGE = st.one_of(
    st.binary(max_size=24),
    utf8(TEXT),
    utf8(st.integers().map(str) | st.floats().map(str)),
    utf8(JSON_ISH.map(json.dumps)),
    utf8(
        st.dictionaries(
            st.sampled_from(["plugin", "action", "params", "type", "message", "attempt", "state", "percentage"]),
            JSON_ISH,
            max_size=4,
        ).map(json.dumps)
    ),
)
MS = utf8(st.integers(0, 2**53).map(str))
REQUEST = st.builds(
    JobRequest,
    plugin=st.from_regex(NAME_PATTERN, fullmatch=True),
    action=st.from_regex(NAME_PATTERN, fullmatch=True),
    params=st.dictionaries(TEXT, JSON_ISH, max_size=3),
)
ERROR = st.builds(ErrorInfo, type=TEXT, message=TEXT, retryable=st.booleans())
PROGRESS = st.builds(
    ProgressUpdate, current_step=st.integers(0, 5), total_steps=st.integers(5, 10), message=TEXT
) | st.builds(ProgressUpdate, percentage=st.floats(0, 100), message=TEXT)
STATES = st.sampled_from(list(JobState)).map(lambda s: s.value)
ATTEMPT = st.builds(AttemptInfo, attempt=st.integers(1, 5), state=st.sampled_from(list(JobState)), error=st.none())

# Per field of a live record: well-formed values as the scripts write them.
VALID: dict[str, st.SearchStrategy[bytes]] = {
    "state": utf8(STATES),
    "request": REQUEST.map(lambda r: r.model_dump_json().encode()),
    "queue": utf8(st.from_regex(NAME_PATTERN, fullmatch=True).map(lambda p: f"ut:queue:default:{p}")),
    "attempt": utf8(st.integers(0, 9).map(str)),
    "seq": utf8(st.integers(0, 99).map(str)),
    "enqueued_at_ms": MS,
    "scheduled_at_ms": MS,
    "expires_at_ms": MS,
    "started_at_ms": MS,
    "finished_at_ms": MS,
    "worker": utf8(TEXT),
    "cancel_requested": utf8(TEXT),
    "result": utf8(JSON_ISH.map(json.dumps)) | utf8(TEXT),
    "error": ERROR.map(lambda e: e.model_dump_json().encode()),
    "progress": PROGRESS.map(lambda p: p.model_dump_json().encode()),
    "attempt:1": ATTEMPT.map(lambda a: a.model_dump_json().encode()),
    "attempt:2": ATTEMPT.map(lambda a: a.model_dump_json().encode()),
    "watched": st.just(b"1"),
    "sig": utf8(TEXT),
}
REQUIRED = ("state", "request", "queue", "enqueued_at_ms", "scheduled_at_ms")
# Field names other than those above (a `job_id` field is the bug of test_a_job_id_field_...).
EXTRA_NAMES = st.binary(min_size=1, max_size=12).filter(lambda k: k.decode(errors="replace") not in (*VALID, "job_id"))


@st.composite
def hashes(draw: st.DrawFn, *, utf8_only: bool = False) -> dict[bytes, bytes]:
    """A record hash: well-formed fields (the optional ones present or not), then up to three fields
    (known or extra) set to garbage: from a record that reads to records damaged in several places."""
    raw: dict[bytes, bytes] = {}
    for name, valid in VALID.items():
        if name in REQUIRED or draw(st.booleans()):
            raw[name.encode()] = draw(valid)
    garbage = GARBAGE.filter(lambda g: not utf8_only or is_utf8(g))
    damaged = draw(st.lists(st.sampled_from(sorted(VALID)).map(str.encode) | EXTRA_NAMES, max_size=3))
    for damaged_name in damaged:
        raw[damaged_name] = draw(garbage)
    if not raw:
        raw[b"state"] = draw(garbage)  # a hash has one field at least (else there is no key)
    return raw


def is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def field_names(raw: Mapping[bytes, bytes]) -> set[str]:
    """What a RecordUnreadableError may name: the hash's fields and JobRecord's."""
    return {k.decode(errors="replace") for k in raw} | set(JobRecord.model_fields)


def read(parse: Callable[[], JobRecord]) -> JobRecord | RecordUnreadableError:
    """What ``parse()`` gives: a record, or the RecordUnreadableError it raised (anything else propagates)."""
    try:
        return parse()
    except RecordUnreadableError as exc:
        return exc


def check_outcome(raw: Mapping[bytes, bytes], outcome: JobRecord | RecordUnreadableError) -> None:
    """A record consistent with ``raw``, or a RecordUnreadableError of JOB_ID naming a field of it."""
    if isinstance(outcome, RecordUnreadableError):
        assert outcome.job_id == JOB_ID
        assert any(outcome.problem.startswith((f"{n}:", f"{n}.")) for n in field_names(raw)), outcome.problem
        return
    assert isinstance(outcome, JobRecord)
    assert outcome.job_id == JOB_ID
    assert outcome.state == JobState(raw[b"state"].decode())
    # As JSON: a request written by hand may hold a NaN, which is not equal to itself.
    assert outcome.request.model_dump_json() == JobRequest.model_validate_json(raw[b"request"]).model_dump_json()
    # A queue set's partition tag (Redis Cluster) is not part of the queue's name.
    assert outcome.queue == Keys.logical_queue_name(raw[b"queue"].decode())
    assert outcome.attempt == (int(raw[b"attempt"]) if b"attempt" in raw else 0)
    assert [a.attempt for a in outcome.attempts] == sorted(a.attempt for a in outcome.attempts)
    assert len(outcome.attempts) == sum(1 for k in raw if k.startswith(b"attempt:"))


@SETTINGS
@given(raw=hashes())
def test_any_live_hash_reads_as_a_record_or_an_unreadable_error_naming_the_field(raw: dict[bytes, bytes]) -> None:
    direct = read(lambda: parse_record(JOB_ID, raw))
    check_outcome(raw, direct)
    event(f"outcome: {type(direct).__name__}")

    async def body(client: JobClient) -> None:
        await client.redis.hset(client.keys.job(JOB_ID), mapping=raw)  # type: ignore[misc]
        try:
            through_redis: JobRecord | RecordUnreadableError = await client.job(JOB_ID).record()
        except RecordUnreadableError as exc:
            through_redis = exc
        check_outcome(raw, through_redis)
        # The same outcome as parse_record's (the field an error names may differ: hash order). JSON
        # compares records whose result is NaN (a NaN is not equal to itself).
        assert type(through_redis) is type(direct)
        if isinstance(through_redis, JobRecord) and isinstance(direct, JobRecord):
            assert through_redis.model_dump_json() == direct.model_dump_json()

    on_fake_redis(body)


IGNORED = {"watched", "sig", "job_id"}  # bookkeeping fields parse_record skips unread


@SETTINGS
@given(raw=hashes(), name=st.sampled_from(sorted(set(VALID) - IGNORED)), bad=st.binary(min_size=1, max_size=8))
def test_invalid_utf8_in_any_field_is_unreadable_naming_that_field(
    raw: dict[bytes, bytes], name: str, bad: bytes
) -> None:
    first = read_first(name, b"\xff" + bad, raw)  # never UTF-8
    with pytest.raises(RecordUnreadableError) as info:
        parse_record(JOB_ID, first)
    assert info.value.problem.startswith(f"{name}: "), info.value.problem


def read_first(name: str, value: bytes, raw: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """``raw`` with ``name`` set to ``value`` as its first field: parse_record reads it before any other."""
    return {name.encode(): value, **{k: v for k, v in raw.items() if k != name.encode()}}


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "name",
    [
        "request",
        "error",
        "progress",
        "attempt:1",
        "result",
    ],
)
@BUG_SETTINGS
@given(raw=hashes(), depth=st.integers(2_000, 20_000))
def test_deeply_nested_json_in_a_field_is_unreadable_not_a_recursion_error(
    name: str, raw: dict[bytes, bytes], depth: int
) -> None:
    first = read_first(name, deep_json(depth), raw)
    outcome = read(lambda: parse_record(JOB_ID, first))
    if name == "result":  # a result that is not readable JSON is its text; any fault is another field's
        check_outcome(first, outcome)
        if isinstance(outcome, JobRecord):
            assert outcome.result == deep_json(depth).decode()
        else:
            assert not outcome.problem.startswith("result: "), outcome.problem
        return
    assert isinstance(outcome, RecordUnreadableError)
    assert outcome.problem.startswith(f"{name}: ")


@BUG_SETTINGS
@given(other=st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda i: i != JOB_ID))
def test_a_job_id_field_in_the_hash_does_not_change_whose_record_it_is(other: str) -> None:
    raw = {
        b"job_id": other.encode(),
        b"state": b"queued",
        b"request": JobRequest(plugin="Rec", action="echo").model_dump_json().encode(),
        b"queue": b"q",
        b"enqueued_at_ms": b"1",
        b"scheduled_at_ms": b"1",
    }
    assert parse_record(JOB_ID, raw).job_id == JOB_ID


# -- final records (arq's result of an ended job) -----------------------------------------------
def final_bytes(actionq: Any, request: Any) -> bytes:
    return json.dumps({"r": None, "actionq": actionq, "k": {"request": request}}).encode()


def as_final(raw: dict[bytes, bytes]) -> bytes:
    """The final record the settle script would write from hash ``raw``: its string fields (cjson.encode
    of the hash) less the request, which goes under arq's kwargs ``k`` (raw JSON, or null if it is none)."""
    fields = {k.decode(): v.decode() for k, v in raw.items() if k != b"request"}
    try:
        request = json.loads(raw.get(b"request", b"null"))
    except ValueError:
        request = None
    return final_bytes(fields, request)


FINAL = st.one_of(
    st.binary(max_size=64),
    utf8(JSON_ISH.map(json.dumps)),
    hashes(utf8_only=True).filter(lambda r: all(is_utf8(k) for k in r)).map(as_final),
    st.builds(final_bytes, st.dictionaries(TEXT, TEXT, max_size=4), JSON_ISH),
)


@SETTINGS
@given(raw=FINAL)
def test_any_final_record_reads_as_a_record_or_an_unreadable_error(raw: bytes) -> None:
    async def body(client: JobClient) -> None:
        await client.redis.set(client.keys.arq_result(JOB_ID), raw)
        try:
            outcome: JobRecord | ActionQError = await client.job(JOB_ID).record()
        except (RecordUnreadableError, JobNotFoundError) as exc:
            outcome = exc
        event(f"outcome: {type(outcome).__name__}")
        if isinstance(outcome, JobNotFoundError):
            assert raw == b""  # JobStore.get takes an empty result for none (a falsy `final`)
        else:
            assert isinstance(outcome, JobRecord | RecordUnreadableError)
            assert outcome.job_id == JOB_ID

    on_fake_redis(body)


@BUG_SETTINGS
@given(
    name=st.sampled_from(["result", "attempt", "seq"]),
    value=st.lists(st.integers(), max_size=2) | st.dictionaries(TEXT, st.integers(), max_size=2),
)
def test_a_final_record_with_a_non_string_field_is_unreadable(name: str, value: Any) -> None:
    fields = {"state": "succeeded", "queue": "q", "enqueued_at_ms": "1", "scheduled_at_ms": "1", name: value}
    request = JobRequest(plugin="Rec", action="echo").model_dump(mode="json")
    outcome = read(lambda: parse_final(JOB_ID, final_bytes(fields, request)))
    assert isinstance(outcome, RecordUnreadableError)
    assert outcome.problem.startswith(f"{name}: ")


# At HEAD arqformat.decode_final let RecursionError out of JobHandle.record() for such a result.
@settings(max_examples=5, deadline=None)
@given(depth=st.integers(2_000, 20_000))
def test_a_deeply_nested_final_record_is_unreadable(depth: int) -> None:
    async def body(client: JobClient) -> None:
        await client.redis.set(client.keys.arq_result(JOB_ID), deep_json(depth))
        with pytest.raises(RecordUnreadableError):
            await client.job(JOB_ID).record()

    on_fake_redis(body)


# -- round trip through the real submit path ----------------------------------------------------
FINITE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=10,
)


@SETTINGS
@given(
    value=FINITE_JSON,
    n=st.integers(-(2**63), 2**63),
    job_id=st.none() | st.from_regex(ID_PATTERN, fullmatch=True),
    queue=st.from_regex(NAME_PATTERN, fullmatch=True),
    defer_s=st.none() | st.floats(0, 10_000),
    timeout_s=st.none() | st.floats(0.001, 3600),
    expires_s=st.none() | st.floats(0.001, 10_000),
    result_ttl_s=st.none() | st.integers(1, 10**6),
    host=st.sampled_from(["any", "local", "other-host"]),
    watch=st.booleans(),
)
def test_a_submitted_record_reads_back_as_submitted(
    value: Any,
    n: int,
    job_id: str | None,
    queue: str,
    defer_s: float | None,
    timeout_s: float | None,
    expires_s: float | None,
    result_ttl_s: int | None,
    host: str,
    watch: bool,
) -> None:
    async def body(client: JobClient) -> None:
        for worker_id, hostname in (("w1", "here"), ("w2", "other-host")):  # live workers reading that lane
            worker = serving(client.keys, [REC], worker_id=worker_id, hostname=hostname, lanes=[queue])
            await client.registry.publish(worker, [REC])
        handle = await client.submit(
            "Rec", "echo", {"value": value, "n": n}, job_id=job_id, queue=queue, defer_s=defer_s,
            timeout_s=timeout_s, expires_s=expires_s, result_ttl_s=result_ttl_s, host=host, watch=watch,
        )  # fmt: skip
        assert handle.created
        record = await handle.record()
        raw = await client.redis.hgetall(client.keys.job(handle.job_id))  # type: ignore[misc]
        assert parse_record(handle.job_id, raw) == record  # the hash as it is, read directly

        assert record.job_id == handle.job_id == (job_id or handle.job_id)
        request = record.request
        assert (request.plugin, request.action) == ("Rec", "echo")
        assert request.params == {"value": value, "n": n}
        assert json.dumps(request.params["value"]) == json.dumps(value)  # types too: 1.0 stays a float
        opts = request.options
        assert (opts.job_id, opts.queue, opts.defer_s, opts.timeout_s) == (job_id, queue, defer_s, timeout_s)
        assert (opts.expires_s, opts.result_ttl_s, opts.watch) == (expires_s, result_ttl_s, watch)
        assert opts.host == {"any": "any", "local": "here"}.get(host, host)
        assert record.queue == client.keys.queue("Rec", queue, None if opts.host == "any" else opts.host)
        assert (record.state, record.attempt, record.seq, record.attempts) == (JobState.QUEUED, 0, 0, [])
        assert record.scheduled_at_ms - record.enqueued_at_ms == int((defer_s or 0) * 1000)
        want_expiry = None if expires_s is None else record.scheduled_at_ms + int(expires_s * 1000)
        assert record.expires_at_ms == want_expiry
        assert (record.result, record.error, record.progress, record.worker) == (None, None, None, None)

        again = await client.submit("Rec", "echo", {"value": value, "n": n}, job_id=handle.job_id, queue=queue)
        assert not again.created  # same id, same work: not enqueued twice
        assert await client.job(handle.job_id).record() == record

    # Values up to 10 leaves of escaped text can pass the fake client's 2 KiB: room for them.
    on_fake_redis(body, max_payload_bytes=65536)
