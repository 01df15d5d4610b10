"""The request body limit (``gateway.max_body_bytes``), enforced before the body is read.

A request whose ``Content-Length`` is over the limit gets 413 at once, its body unread; one
without a length (chunked) is counted as it arrives, and the read that passes the limit raises
:class:`BodyTooLarge`, which the app turns into the same 413. Either way nothing was submitted:
the route had not got its body yet.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.problems import error_body

__all__ = ["BodyLimit", "BodyTooLarge"]


class BodyTooLarge(HTTPException):
    """The request body passed ``gateway.max_body_bytes`` (an ``HTTPException``, which FastAPI lets through
    its body parsing, so the app's handler answers it in the one error shape)."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        seen = f"{size} bytes" if size is not None else "more"
        super().__init__(413, f"the request body is {seen}, over the limit of {limit} bytes (gateway.max_body_bytes)")


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413), unread when the length is declared."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _refuse(send, BodyTooLarge(self.limit, declared))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps(error_body("BodyTooLarge", str(exc.detail))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The body is never read: tell the client this connection ends with the reply.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
