"""schemathesis against the running gateway: every operation of its OpenAPI document, generated
requests (valid and not), against the real gateway subprocess, a real redis-server and a real
worker. No request may get a 5xx, and every response must match the document (status code,
content type, headers, body schema).

Left out: schemathesis's checks that a schema-valid request is accepted and a schema-invalid one
refused. The document types the body (a plugin name is a string), not the registry: a plugin
nobody serves is schema-valid and correctly refused with 422, the same error as the Python
client's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import FAST, WorkerFactory, bundled_plugins_config  # noqa: E402
from tests.integration.test_gateway import GatewayProc, gateway_process  # noqa: E402, F401

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 12  # per operation: enough to reach every branch of the validation, inside the suite's budget


def test_no_operation_errors_or_breaks_its_schema(
    worker_process: WorkerFactory,
    gateway_process: Callable[..., GatewayProc],  # noqa: F811
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    gw = gateway_process()
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        tested += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            if case.operation.path == "/v1/events":
                case.query = {**(case.query or {}), "follow": "false"}  # the firehose never ends otherwise
            case.call_and_validate(timeout=20, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {exc}")
    assert tested >= 10, f"only {tested} operations in the document"
    assert not failures, "\n\n".join(failures)
