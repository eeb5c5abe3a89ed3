"""A route class that audits every refusal its routes answer (docs/protocol.md §6).

The exchange routes audit their own refusals step by step; the other routes of a component (the
auditor and citizen APIs of a node, say) answer 400, 401, 403 or 404 from a dependency, from
request validation or from their handler. Routes built with ``refusal_auditing_route(record)``
call ``record(exc, route, request)`` for each such refusal before the problem goes out — ``route`` is the
route's methods and path template, never the request's own path (no identifier of the request or
of a citizen reaches the log) — and only once per error (``OnceOnlyError.audited``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from exchange.errors import ClientError, OnceOnlyError

__all__ = ["RefusalRecorder", "refusal_auditing_route"]

RefusalRecorder = Callable[[OnceOnlyError, str, Request], None]
"""``record(refusal, route, request)``: writes the refusal's audit entry (blocking; run in a
thread). ``request`` is there for what the route proved before refusing (a verified caller it put
in the request's scope), never for the request's own path or parameters."""


def refusal_auditing_route(record: RefusalRecorder) -> type[APIRoute]:
    """An ``APIRoute`` class whose handler records every refusal it answers."""

    class _AuditingRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            route = f"{','.join(sorted(self.methods or ()))} {self.path}"

            async def audited(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError:
                    refusal = ClientError("the request is not valid")
                    await run_in_threadpool(record, refusal, route, request)
                    raise
                except OnceOnlyError as exc:
                    if not exc.audited and exc.status < 500:
                        await run_in_threadpool(record, exc, route, request)
                        exc.audited = True
                    raise

            return audited

    return _AuditingRoute
