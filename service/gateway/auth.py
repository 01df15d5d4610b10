"""Bearer tokens with scopes: ``read``, ``submit``, ``control``, ``admin`` (which implies the others).

Tokens come from the ``gateway.tokens`` setting (each a name, a secret and its scopes). With no
token configured the API is open, which is why :mod:`service.gateway.server` then binds to
loopback only. A request without a valid token gets 401 with ``WWW-Authenticate: Bearer``; a
valid token without the scope a route needs gets 403 naming the scope. Tokens are compared in
constant time and never logged; the token's ``name`` is what a log line may carry.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.gateway.problems import ApiError
from service.settings import GatewayToken

__all__ = ["Scope", "needs", "scoped", "token_for"]

Scope = Literal["read", "submit", "control", "admin"]


def token_for(tokens: Sequence[GatewayToken], presented: str) -> GatewayToken | None:
    """The configured token ``presented`` is, if any (every token compared, in constant time each)."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.token.get_secret_value().encode(), presented.encode()):
            found = token
    return found


# Documents the scheme in the OpenAPI document; the check (and its 401 in our error shape) is ours.
_BEARER = HTTPBearer(auto_error=False, description="A token of gateway.tokens (none configured: no token needed).")


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
        if credentials is None or not credentials.credentials.strip():
            raise _unauthorized("this gateway needs a bearer token (Authorization: Bearer <token>)")
        token = token_for(tokens, credentials.credentials.strip())
        if token is None:
            raise _unauthorized("the bearer token is not one this gateway accepts")
        if scope not in token.scopes and "admin" not in token.scopes:
            granted = ", ".join(token.scopes)
            raise ApiError(403, "Forbidden", f"this needs the {scope!r} scope; token {token.name!r} has {granted}")
        return token.name

    return check


def scoped(scope: Scope) -> list[Any]:
    """``dependencies=`` for a route that needs ``scope``."""
    return [Depends(needs(scope))]
