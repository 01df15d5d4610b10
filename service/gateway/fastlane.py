"""The common submits, ``POST /v1/jobs`` and ``POST /v1/jobs:batch`` with well-formed bodies,
answered before FastAPI's routing.

At full load FastAPI's middleware stack, routing and dependency solving cost the gateway more CPU
per submit than the submit itself (a profile under 64 requests in flight: the route's own work
is about a fifth of the request). This ASGI app, in front of the whole FastAPI app
(:class:`~service.gateway.app.GatewayApp`; with tracing on, the outermost of its middlewares
instead, so that FastAPI's HTTP spans cover it), answers the request itself only when it can
answer exactly as the declared route would:

* ``POST /v1/jobs`` or ``POST /v1/jobs:batch``, a JSON content type and a declared
  ``Content-Length`` within ``gateway.max_body_bytes``, and no CORS configured (that middleware
  must see every request);
* no token configured, or an ``Authorization: Bearer`` token that grants ``submit``;
* a body :class:`~service.gateway.schemas.SubmitBody` accepts; for a batch, items that are all
  valid (each a :class:`~service.gateway.schemas.BatchItem`), no more than ``gateway.max_batch``
  (validated from the raw JSON in one call, where the route parses the JSON, checks it is a list
  of objects, then validates the items).

Anything else goes on to the route, with the body it has read replayed: a malformed body, a
missing or refused token, a cookie, an oversized or chunked body all get the route's answer, in
its one error shape. An error of the submit itself (bad params, an unknown plugin, Redis down)
is answered here by the app's handler for it, not passed on: a submit must not be sent twice; so
is an unexpected error (a bug), with the app's 500.
The route stays the documented one (the OpenAPI document, schemathesis and every test see the
same behaviour through either path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ActionQError
from service.gateway.auth import granted
from service.gateway.jobs import BATCH_ITEMS, submit_body, submitted, submitted_batch
from service.gateway.problems import ApiError, respond, unexpected
from service.gateway.schemas import BatchItem, SubmitBody

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["FastLane"]

_SUBMIT, _BATCH = "/v1/jobs", "/v1/jobs:batch"


class FastLane:
    """ASGI middleware: the well-formed submit and batch answered at once, everything else passed on."""

    def __init__(self, app: ASGIApp, gateway: FastAPI, limit: int) -> None:
        self.app = app
        self.gateway = gateway
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in (_SUBMIT, _BATCH) or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        size = _length(headers.get(b"content-length"))
        json_body = headers.get(b"content-type", b"").startswith(b"application/json")
        if size is None or size > self.limit or not json_body or not self._granted(headers):
            await self.app(scope, receive, send)
            return
        body, messages = await _read(receive)
        try:
            reply = await (self._submit(headers, body) if path == _SUBMIT else self._batch(headers, body))
        except ActionQError as exc:  # nothing was written, or it may have been: never sent again
            reply = respond(exc)
        except Exception as exc:  # a bug: the app's 500, as its ServerErrorMiddleware would answer
            reply = unexpected(exc, path)
        if reply is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        await reply(scope, receive, send)

    def _granted(self, headers: dict[bytes, bytes]) -> bool:
        """True if no token is configured, or the request's bearer token grants ``submit``."""
        tokens = self.gateway.state.settings.gateway.tokens
        if not tokens:
            return True
        scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            granted(tokens, credentials.strip(), "submit")
        except ApiError:
            return False
        return True

    async def _submit(self, headers: dict[bytes, bytes], body: bytes) -> Response | None:
        """The submit's reply, or ``None`` for a body the route's model refuses (the route says why)."""
        try:
            submit = SubmitBody.model_validate_json(body)
        except ValidationError:
            return None
        key, trace = _text(headers.get(b"idempotency-key")), _text(headers.get(b"traceparent"))
        return submitted(await submit_body(self.gateway.state.client, submit, key, trace))

    async def _batch(self, headers: dict[bytes, bytes], body: bytes) -> Response | None:
        """The batch's reply, or ``None`` unless every item is valid and they are within ``max_batch``
        (the route answers: each invalid item its own 422 result, or the batch's 422)."""
        try:
            items = BATCH_ITEMS.validate_json(body)
        except ValidationError:
            return None
        if len(items) > self.gateway.state.settings.gateway.max_batch:
            return None
        parsed: list[BatchItem | dict[str, Any]] = list(items)
        return await submitted_batch(self.gateway.state.client, parsed, _text(headers.get(b"traceparent")))


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lowercase name (the first of a repeated one, as Starlette reads them)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name, value)
    return found


def _length(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("latin-1") if raw is not None else None


async def _read(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body, and the messages it came in (to replay them to the route if need be)."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request"), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` as the route sees it: the messages already read, then the connection's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
