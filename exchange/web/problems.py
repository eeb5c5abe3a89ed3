"""RFC 9457 problem+json, mapped once (style rule 11).

Every ``OnceOnlyError`` becomes ``{"type", "title", "status", "detail", "code", "instance"}`` with a
stable ``type`` URI derived from its X-Road style code and an ``X-Road-Error`` header. Signature
failures go out with one opaque detail. Anything unexpected is logged server-side with an error id
and answered as an opaque 500 carrying only that id: no stack trace ever leaves the process.
Validation errors of FastAPI (a caller's bad JSON/query) become 400 ``Client.BadRequest``.

Infrastructure faults are 503 with ``Retry-After``: every ``UnavailableError``, and any error that
``exchange.db.as_unavailable`` recognises as the database being unusable (a terminated
connection, a server refusing connections, a corrupted SQLite file) wherever it was raised — a
route, the node's exchange fast path, the group commit writer. Each such answer calls the app's
``on_database_unavailable`` hook (the metrics count it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import fastapi.routing
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from exchange.db import DATABASE_ERRORS, as_unavailable
from exchange.errors import (
    RETRY_AFTER_S,
    DatabaseUnavailable,
    MethodNotAllowedError,
    OnceOnlyError,
    UnavailableError,
    VerificationError,
)
from exchange.web.redirects import route_path

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "TITLES",
    "install_problem_handlers",
    "problem_document",
    "problem_for",
    "problem_response",
    "problem_type",
]

PROBLEM_BASE = "https://onceonly.example/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
_log = logging.getLogger("onceonly.problems")

TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Refused",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def problem_type(code: str) -> str:
    """``Server.ServerProxy.AccessDenied`` → ``…/problems/server.serverproxy.accessdenied``."""
    return PROBLEM_BASE + code.lower()


def problem_document(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The RFC 9457 body; also what a provider node signs into a refusal."""
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
    retry_after_s: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The problem as a response; a 503 always says when to retry (``Retry-After``)."""
    headers = {**(headers or {}), "X-Road-Error": code}
    if status == 503:
        headers["Retry-After"] = str(retry_after_s or RETRY_AFTER_S)
    return JSONResponse(
        problem_document(status, code, detail, instance=instance, extra=extra),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _note_database_unavailable(request: Request) -> None:
    app = request.scope.get("app")
    hook: Callable[[], None] | None = getattr(
        getattr(app, "state", None), "on_database_unavailable", None
    )
    if hook is not None:
        hook()


def _cause_summary(cause: BaseException) -> str:
    """The driver's error class and first line: never SQLAlchemy's text, which quotes the statement
    and its parameters (personal data)."""
    orig = getattr(cause, "orig", None) or cause
    lines = str(orig).splitlines()
    return f"{type(orig).__name__}: {lines[0][:200] if lines else ''}"


def _onceonly_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OnceOnlyError)
    # Rule 11: a signature failure says nothing about which check failed.
    detail = "message verification failed" if type(exc) is VerificationError else exc.detail
    extra: dict[str, Any] = {}
    reasons = getattr(exc, "reasons", ())
    if reasons:
        extra["reasons"] = list(reasons)
    if exc.status >= 500:
        error_id = str(uuid.uuid4())
        cause = exc.__cause__
        _log.warning(
            "%s %s: %s (error id %s)%s",
            request.method,
            request.url.path,
            exc.code,
            error_id,
            f" caused by {_cause_summary(cause)}" if cause else "",
        )
        extra["error_id"] = error_id
    if isinstance(exc, DatabaseUnavailable):
        _note_database_unavailable(request)
    retry_after = exc.retry_after_s if isinstance(exc, UnavailableError) else None
    allow = exc.allow if isinstance(exc, MethodNotAllowedError) else None
    return problem_response(
        exc.status,
        exc.code,
        detail,
        instance=request.url.path,
        extra=extra,
        retry_after_s=retry_after,
        headers={"Allow": ", ".join(allow)} if allow else None,
    )


def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    return problem_response(
        400,
        "Client.BadRequest",
        "the request is not valid",
        instance=request.url.path,
        extra={"errors": errors[:20]},
    )


def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "Client.NotFound", 405: "Client.MethodNotAllowed"}.get(
        exc.status_code, "Client.BadRequest" if exc.status_code < 500 else "Server.Internal"
    )
    detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(
        exc.status_code, code, detail, instance=request.url.path, headers=headers
    )


def _allowed_methods(request: Request) -> str:
    """Every method the path takes (RFC 9110 §15.5.6): Starlette's 405 names only those of the
    first route matching the path, and a resource often has one route per method."""
    scope = request.scope
    routes = getattr(scope.get("app"), "routes", ())
    # FastAPI ≥ 0.13x keeps included routers whole; ``iter_route_contexts`` gives their routes.
    expand = getattr(fastapi.routing, "iter_route_contexts", None)
    path = route_path(scope)
    matched: dict[str, set[str]] = {}
    for route in expand(routes) if expand is not None else routes:
        template, route_methods = getattr(route, "path", None), getattr(route, "methods", None)
        if template and route_methods and compile_path(template)[0].match(path):
            matched.setdefault(template, set()).update(route_methods)
    if not matched:
        return ""
    # As in OpenAPI, the most concrete template names the resource: ``/procedures/address-change``
    # is not ``/procedures/{procedure_id}``.
    fewest = min(t.count("{") for t in matched)
    return ", ".join(
        sorted(set().union(*(m for t, m in matched.items() if t.count("{") == fewest)))
    )


def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    unavailable = as_unavailable(exc)
    if unavailable is not None:
        return _onceonly_handler(request, unavailable)
    error_id = str(uuid.uuid4())
    _log.exception("unexpected error %s on %s %s", error_id, request.method, request.url.path)
    return problem_response(
        500,
        "Server.Internal",
        "internal error",
        instance=request.url.path,
        extra={"error_id": error_id},
    )


def problem_for(request: Request, exc: Exception) -> JSONResponse:
    """The response the installed handlers give for ``exc``, for code that serves a request
    outside the app's exception middleware (the node's exchange fast path)."""
    if isinstance(exc, OnceOnlyError):
        return _onceonly_handler(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_handler(request, exc)
    return _unexpected_handler(request, exc)


def install_problem_handlers(
    app: FastAPI, *, on_database_unavailable: Callable[[], None] | None = None
) -> None:
    """Map every error of ``app`` once; ``on_database_unavailable`` is called per 503 that the
    database caused (for the metrics)."""
    app.state.on_database_unavailable = on_database_unavailable
    app.add_exception_handler(OnceOnlyError, _onceonly_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    # Database errors get their own entry: the catch-all below is Starlette's last resort, which
    # answers and then re-raises into the server; a database outage is an expected answer.
    for database_error in DATABASE_ERRORS:
        app.add_exception_handler(database_error, _unexpected_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
