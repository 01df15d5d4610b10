"""One error shape for every error the gateway returns, and the translation of ours into it.

Every 4xx and 5xx body is ``{"error": {"type", "message", "fields"?}}``: ``type`` is the name of
the Python client's exception where there is one (``InvalidParamsError``, ``UnknownPluginError``,
``JobNotFoundError``...), so an HTTP caller and a Python caller see the same errors; ``fields``
lists ``{"field", "message"}`` for errors that name fields (bad params, a malformed body).

Where each of our errors lands (the one translation boundary, STYLE §4)::

    InvalidParamsError, UnknownPluginError, UnknownActionError,
    UnservableJobError, other SubmissionError           422
    JobConflictError                                    409
    PayloadTooLargeError                                413
    JobNotFoundError                                    404
    BrokerError                                         503
    ResultTimeoutError                                  504
    other ActionQError                                  500
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    ActionQError,
    BrokerError,
    FieldError,
    InvalidParamsError,
    JobConflictError,
    JobNotFoundError,
    PayloadTooLargeError,
    ResultTimeoutError,
    SubmissionError,
)
from service.gateway.schemas import ErrorBody, ErrorDetail, FieldProblem

__all__ = ["ApiError", "document_errors", "error_body", "install_handlers", "status_of"]

log = structlog.get_logger("actionq.gateway")

_STATUS: tuple[tuple[type[ActionQError], int], ...] = (
    (JobConflictError, 409),
    (PayloadTooLargeError, 413),
    (SubmissionError, 422),
    (JobNotFoundError, 404),
    (BrokerError, 503),
    (ResultTimeoutError, 504),
)
_HTTP_TYPES = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}


class ApiError(Exception):
    """An error the gateway itself raises: its status, type name, message and optional fields/headers."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        fields: Sequence[FieldProblem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.fields = list(fields)
        self.headers = headers or {}


def status_of(exc: ActionQError) -> int:
    """The HTTP status an error of ours stands for (see the module docstring)."""
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


_ERRORS = (
    (400, "The body is not JSON (or not the JSON object the operation takes)."),
    (401, "No bearer token, or not one this gateway accepts (when tokens are configured)."),
    (403, "The token lacks the scope this operation needs; the message names it."),
    (404, "No such job, worker, plugin or dead letter (never there, or expired)."),
    (409, "The Idempotency-Key (job id) is taken by a different job."),
    (413, "The body is over gateway.max_body_bytes (refused before it is read)."),
    (422, "The request names a plugin, action or params the registry refuses; fields name each problem."),
    (503, "Redis is unreachable (the gateway stays up; retry)."),
)


def document_errors(app: FastAPI) -> None:
    """List the error responses every operation may give in the OpenAPI document, as JSON in the one shape.

    Done on the generated document rather than with ``responses=``: FastAPI would document an
    event-stream operation's errors as ``text/event-stream``, but errors are JSON everywhere.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components = document.setdefault("components", {}).setdefault("schemas", {})
        components.update(schema.pop("$defs", {}))
        components["ErrorBody"] = schema
        json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path in document.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                for status, description in _ERRORS:
                    responses[str(status)] = {"description": description, "content": json_error}
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def error_body(type_: str, message: str, fields: Sequence[FieldProblem] = ()) -> dict[str, Any]:
    """The JSON of one error, in the shape every error has."""
    detail = ErrorDetail(type=type_, message=message, fields=list(fields) or None)
    return ErrorBody(error=detail).model_dump(mode="json", exclude_none=True)


def fields_of(exc: ActionQError) -> list[FieldProblem]:
    """The fields an error names (those of :class:`InvalidParamsError`), as the Python client has them."""
    if isinstance(exc, InvalidParamsError):
        return [_problem(e) for e in exc.errors]
    return []


def _problem(error: FieldError) -> FieldProblem:
    return FieldProblem(field=error.field, message=error.message)


def respond(exc: ActionQError) -> JSONResponse:
    """The response for one of our errors."""
    status = status_of(exc)
    if status >= 500:
        log.warning("gateway_error", type=type(exc).__name__, error=str(exc))
    return JSONResponse(error_body(type(exc).__name__, str(exc), fields_of(exc)), status_code=status)


def _validation_fields(exc: RequestValidationError) -> list[FieldProblem]:
    problems = []
    for err in exc.errors()[:20]:
        loc = [str(part) for part in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "header", "path"):
            loc = loc[1:] if loc[0] == "body" else loc
        message = "unknown field" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid"))
        problems.append(FieldProblem(field=".".join(loc) or "(body)", message=message))
    return problems


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if any(err.get("type") == "json_invalid" for err in exc.errors()):
        first = next(err for err in exc.errors() if err.get("type") == "json_invalid")
        reason = first.get("ctx", {}).get("error", "not valid JSON")
        return JSONResponse(error_body("MalformedJSONError", f"the request body is not valid JSON: {reason}"), 400)
    fields = _validation_fields(exc)
    message = "invalid request: " + "; ".join(f"{f.field}: {f.message}" for f in fields)
    return JSONResponse(error_body("RequestValidationError", message, fields), 422)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status == 204:  # not an error: "nothing more" (an EventSource stops reconnecting on it)
        return Response(status_code=204, headers=exc.headers)
    body = error_body(exc.type, exc.message, exc.fields)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _on_ours(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ActionQError)
    return respond(exc)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = _HTTP_TYPES.get(exc.status_code, "HTTPError")
    return JSONResponse(error_body(type_, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return unexpected(exc, request.url.path)


def unexpected(exc: Exception, path: str) -> JSONResponse:
    """The 500 for an error that is none of ours (a bug): logged with its traceback, named in the reply."""
    log.error("gateway_unexpected_error", path=path, exc_info=exc)
    return JSONResponse(error_body("InternalError", f"unexpected {type(exc).__name__}; see the gateway's log"), 500)


def install_handlers(app: FastAPI) -> None:
    """Route every error through the one shape (and document it for every operation)."""
    document_errors(app)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(ActionQError, _on_ours)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
