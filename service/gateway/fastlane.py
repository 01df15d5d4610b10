"""The common submit, ``POST /v1/jobs`` with a well-formed body, answered before FastAPI's routing.

At full load FastAPI's middleware stack, routing and dependency solving cost the gateway more CPU
per submit than the submit itself (a profile under 64 requests in flight: the route's own work
is about a fifth of the request). This middleware, the outermost of the app's own, answers the
request itself only when it can answer exactly as the declared route would:

* ``POST /v1/jobs``, a JSON content type and a declared ``Content-Length`` within
  ``gateway.max_body_bytes``, and no CORS configured (that middleware must see every request);
* no token configured, or an ``Authorization: Bearer`` token that grants ``submit``;
* a body :class:`~service.gateway.schemas.SubmitBody` accepts.

Anything else goes on to the route, with the body it has read replayed: a malformed body, a
missing or refused token, a cookie, an oversized or chunked body all get the route's answer, in
its one error shape. An error of the submit itself (bad params, an unknown plugin, Redis down)
is answered here by the app's handler for it, not passed on: a submit must not be sent twice.
The route stays the documented one (the OpenAPI document, schemathesis and every test see the
same behaviour through either path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ActionQError
from service.gateway.auth import granted
from service.gateway.jobs import submit_body, submitted
from service.gateway.problems import ApiError, respond
from service.gateway.schemas import SubmitBody

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["FastLane"]

_PATH = "/v1/jobs"


class FastLane:
    """ASGI middleware: the well-formed ``POST /v1/jobs`` answered at once, everything else passed on."""

    def __init__(self, app: ASGIApp, gateway: FastAPI, limit: int) -> None:
        self.app = app
        self.gateway = gateway
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != _PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        size = _length(headers.get(b"content-length"))
        if size is None or size > self.limit or not headers.get(b"content-type", b"").startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        body, messages = await _read(receive)
        body_model = self._accepted(headers, body)
        if body_model is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        key, trace = headers.get(b"idempotency-key"), headers.get(b"traceparent")
        client = self.gateway.state.client
        try:
            handle = await submit_body(client, body_model, _text(key), _text(trace))
        except ActionQError as exc:  # nothing was written, or it may have been: never sent again
            await respond(exc)(scope, receive, send)
            return
        await submitted(handle)(scope, receive, send)

    def _accepted(self, headers: dict[bytes, bytes], body: bytes) -> SubmitBody | None:
        """The body as a submit, if the token grants ``submit`` and the body is one; else ``None``."""
        tokens = self.gateway.state.settings.gateway.tokens
        if tokens:
            scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            try:
                granted(tokens, credentials.strip(), "submit")
            except ApiError:
                return None
        try:
            return SubmitBody.model_validate_json(body)
        except ValidationError:
            return None


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
