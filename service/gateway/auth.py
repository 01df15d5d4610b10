"""Bearer tokens with scopes: ``read``, ``submit``, ``control``, ``admin`` (which implies the others).

Tokens come from the ``gateway.tokens`` setting (each a name, a secret and its scopes). With no
token configured the API is open, which is why :mod:`service.gateway.server` then binds to
loopback only. A request without a valid token gets 401 with ``WWW-Authenticate: Bearer``; a
valid token without the scope a route needs gets 403 naming the scope. Tokens are compared in
constant time and never logged; the token's ``name`` is what a log line may carry.

The token may also come in the ``actionq_token`` cookie (HttpOnly, SameSite=Strict), which the
dashboard's login form sets: a browser's ``EventSource`` cannot send an ``Authorization`` header.
The header wins when both are sent. A browser sends a cookie by itself, so a request that changes
something (not GET or HEAD) is taken on the cookie only with an ``Origin`` naming this gateway's
own host: SameSite keeps other sites out, but not another port of the same host.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.gateway.problems import ApiError
from service.settings import GatewayToken

__all__ = ["TOKEN_COOKIE", "Scope", "from_cookie", "granted", "needs", "same_origin", "scoped", "token_for"]

Scope = Literal["read", "submit", "control", "admin"]

TOKEN_COOKIE = "actionq_token"
"""The cookie the dashboard's login form stores the token in (read when no bearer header is sent)."""


def token_for(tokens: Sequence[GatewayToken], presented: str) -> GatewayToken | None:
    """The configured token ``presented`` is, if any (every token compared, in constant time each)."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.token.get_secret_value().encode(), presented.encode()):
            found = token
    return found


# Documents the scheme in the OpenAPI document; the check (and its 401 in our error shape) is ours.
_BEARER = HTTPBearer(auto_error=False, description="A token of gateway.tokens (none configured: no token needed).")


def from_cookie(request: Request) -> str:
    """The token of the dashboard's cookie; 403 on a cookie-borne unsafe request from another origin."""
    presented = request.cookies.get(TOKEN_COOKIE, "").strip()
    if presented and request.method not in ("GET", "HEAD") and not same_origin(request):
        raise ApiError(403, "Forbidden", "a request on the dashboard's cookie must come from its own pages "
                       "(Origin is not this gateway); send the token as Authorization: Bearer instead")  # fmt: skip
    return presented


def same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` names the host it was sent to (what a browser sends on its POSTs)."""
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc == request.headers.get("host")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "Unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="actionq"'})


def needs(scope: Scope) -> Callable[..., Awaitable[str | None]]:
    """A dependency that lets the request through only with a token granting ``scope``.

    It returns the token's name (``None`` when no token is configured and the API is open).
    """

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> str | None:
        tokens: list[GatewayToken] = request.app.state.settings.gateway.tokens
        if not tokens:
            return None
        presented = credentials.credentials.strip() if credentials is not None else ""
        return granted(tokens, presented or from_cookie(request), scope)

    return check


def granted(tokens: Sequence[GatewayToken], presented: str, scope: Scope) -> str:
    """The name of the token ``presented``, if it is one of ``tokens`` and grants ``scope``; else the
    401 (no token, or not one of ours) or 403 (a token without the scope) as an :class:`ApiError`."""
    if not presented:
        raise _unauthorized("this gateway needs a bearer token (Authorization: Bearer <token>)")
    token = token_for(tokens, presented)
    if token is None:
        raise _unauthorized("the bearer token is not one this gateway accepts")
    if scope not in token.scopes and "admin" not in token.scopes:
        raise ApiError(403, "Forbidden", f"this needs the {scope!r} scope; token {token.name!r} has "
                       f"{', '.join(token.scopes)}")  # fmt: skip
    return token.name


def scoped(scope: Scope) -> list[Any]:
    """``dependencies=`` for a route that needs ``scope``."""
    return [Depends(needs(scope))]
