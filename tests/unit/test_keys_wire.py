"""Key names, arq compatibility of our prefixes, and the JSON-only wire."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import arq.constants
import pytest

from service.arqformat import IN_PROGRESS_PREFIX, RESULT_PREFIX
from service.errors import PayloadTooLargeError
from service.keys import Keys
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
