"""Who is looking: the token of a dashboard request, its scopes, and the login form that sets it.

The dashboard takes the same tokens as the API (``gateway.tokens``). A browser cannot put an
``Authorization`` header on a page load or an ``EventSource``, so the login form stores the token
in an HttpOnly, SameSite=Strict cookie (:data:`~service.gateway.auth.TOKEN_COOKIE`) that
:mod:`service.gateway.auth` also accepts: the API calls the pages make carry it, and a cross-site
page cannot make the browser send it. A page request without a valid token is sent to the login
form; one whose token lacks ``read`` is refused there. With no token configured the dashboard is
open, like the API (which then listens on loopback only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service.gateway.auth import TOKEN_COOKIE, Scope, from_cookie, same_origin, token_for
from service.gateway.dashboard.render import page
from service.settings import GatewayToken

__all__ = ["LoginNeeded", "Viewer", "ViewerDep", "install", "viewer"]

router = APIRouter(include_in_schema=False)

_ALL: frozenset[str] = frozenset({"read", "submit", "control", "admin"})
_COOKIE_MAX_AGE_S = 12 * 3600  # a working day: a shared screen does not stay logged in for ever


@dataclass(frozen=True)
class Viewer:
    """The token behind a page request (``name`` None: no token configured, everything allowed)."""

    name: str | None
    scopes: frozenset[str]
    login_needed: bool = False

    def can(self, scope: Scope) -> bool:
        """Whether the token grants ``scope`` (``admin`` grants every one): action buttons show only then."""
        return scope in self.scopes or "admin" in self.scopes


class LoginNeeded(Exception):
    """A page was asked for without a token that may read: answered with the login form."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _presented(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return from_cookie(request)


async def viewer(request: Request) -> Viewer:
    """The request's :class:`Viewer`; :class:`LoginNeeded` when tokens are configured and none that reads came."""
    tokens: list[GatewayToken] = request.app.state.settings.gateway.tokens
    if not tokens:
        return Viewer(None, _ALL, login_needed=False)
    presented = _presented(request)
    if not presented:
        raise LoginNeeded("this gateway needs a token: paste one of gateway.tokens")
    token = token_for(tokens, presented)
    if token is None:
        raise LoginNeeded("that token is not one this gateway accepts")
    found = Viewer(token.name, frozenset(token.scopes), login_needed=True)
    if not found.can("read"):
        raise LoginNeeded(f"token {token.name!r} has no 'read' scope, which the dashboard needs")
    return found


ViewerDep = Annotated[Viewer, Depends(viewer)]


def _login_form(request: Request, message: str = "", status: int = 200) -> HTMLResponse:
    target = request.query_params.get("next", "/")
    message = message or request.query_params.get("why", "")
    return page(request, "login.html", None, status=status, message=message, next=_safe_next(target))


def _safe_next(target: str) -> str:
    """Only a path on this gateway (``//evil.example`` or a full URL would be an open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.get("/ui/login")
async def login_form(request: Request) -> HTMLResponse:
    """The login form."""
    return _login_form(request)


@router.post("/ui/login", response_model=None)
async def login(request: Request) -> Response:
    """Check the posted token; store it in the cookie and go on, or show the form again saying why.

    A post from another origin is refused (a page elsewhere must not log the browser in with its token).
    """
    if request.headers.get("origin") is not None and not same_origin(request):
        return _login_form(request, "this form only takes posts from this gateway's own pages", status=403)
    form = parse_qs((await request.body()).decode(errors="replace"))
    presented = form.get("token", [""])[0].strip()
    target = _safe_next(form.get("next", ["/"])[0])
    tokens: list[GatewayToken] = request.app.state.settings.gateway.tokens
    token = token_for(tokens, presented) if presented else None
    if token is None or not ("read" in token.scopes or "admin" in token.scopes):
        why = f"token {token.name!r} has no 'read' scope" if token else "that token is not one this gateway accepts"
        return _login_form(request, why, status=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        TOKEN_COOKIE, presented, max_age=_COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


@router.post("/ui/logout")
async def logout() -> RedirectResponse:
    """Forget the token (the cookie)."""
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


async def _on_login_needed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginNeeded)
    if request.headers.get("hx-request"):  # an htmx fragment: a redirect would swap the form into the table
        return Response(status_code=401, headers={"HX-Redirect": "/ui/login"})
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(here)}&why={quote(exc.message)}", status_code=303)


def install(app: FastAPI) -> None:
    """The login routes and the handler that turns :class:`LoginNeeded` into the login form."""
    app.include_router(router)
    app.add_exception_handler(LoginNeeded, _on_login_needed)
