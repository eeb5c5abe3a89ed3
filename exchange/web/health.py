"""Liveness and readiness (``/healthz``, ``/readyz``) shared by every component.

``/healthz`` is liveness: the process serves HTTP; it never touches the database, so an orchestrator
does not restart a node because its database is briefly away. ``/readyz`` is readiness: it runs
cheap checks (the database answers a query, ``exchange.db.check_database``) and answers 503
problem+json with ``Retry-After`` when one fails, so a load balancer stops sending traffic until
the database is back. Each check runs in a worker thread, bounded by ``READINESS_TIMEOUT_S``.
``operations_router`` serves both and ``/metrics`` for a component that needs nothing more;
``OPERATIONS`` documents the three (the node serves its own, with the same documentation).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import Engine

from exchange.db import as_unavailable, check_database
from exchange.errors import OnceOnlyError, UnavailableError
from exchange.web.metrics import CONTENT_TYPE, ComponentMetrics
from exchange.web.openapi import PUBLIC, documented, json_content
from exchange.web.problems import problem_response

__all__ = [
    "LIVENESS",
    "METRICS",
    "READINESS",
    "READINESS_TIMEOUT_S",
    "database_check",
    "operations_router",
    "readiness",
]

READINESS_TIMEOUT_S = 3.0
Check = Callable[[], None]
"""Returns when the part is usable; raises (``OnceOnlyError`` preferably) when it is not."""

LIVENESS = documented(
    "getHealth",
    security=PUBLIC,
    responses={
        200: {
            "description": "the process serves HTTP (and what it is)",
            "content": json_content(
                {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                }
            ),
        }
    },
)
READINESS = documented(
    "getReadiness",
    security=PUBLIC,
    problems=(503,),
    responses={
        200: {
            "description": "every check passed",
            "content": json_content(
                {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"const": "ready"},
                        "checks": {"type": "object", "additionalProperties": {"const": "ok"}},
                    },
                }
            ),
        }
    },
)
METRICS = documented(
    "getMetrics",
    security=PUBLIC,
    problems=(503,),  # collectors may read the database
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
"""The documentation of ``/healthz``, ``/readyz`` and ``/metrics`` (``documented`` keywords)."""


def database_check(engine: Engine) -> Check:
    return lambda: check_database(engine)


async def _run(check: Check) -> str | None:
    """``None`` when the check passed, else why not (no driver message: it may name hosts)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(check), timeout=READINESS_TIMEOUT_S)
    except TimeoutError:
        return "timed out"
    except OnceOnlyError as exc:
        return exc.detail
    except Exception as exc:
        unavailable = as_unavailable(exc)
        return unavailable.detail if unavailable is not None else "failed"
    return None


async def readiness(
    checks: Mapping[str, Check],
    *,
    instance: str = "/readyz",
    on_database_unavailable: Callable[[], None] | None = None,
) -> JSONResponse:
    """200 ``{"status": "ready", "checks": {...}}``, or 503 problem+json naming what failed."""
    results = {name: await _run(check) for name, check in checks.items()}
    failed = {name: why for name, why in results.items() if why is not None}
    if not failed:
        return JSONResponse({"status": "ready", "checks": dict.fromkeys(results, "ok")})
    if "database" in failed and on_database_unavailable is not None:
        on_database_unavailable()
    error = UnavailableError("not ready: " + ", ".join(sorted(failed)))
    return problem_response(
        error.status,
        error.code,
        error.detail,
        instance=instance,
        extra={"checks": {name: why or "ok" for name, why in results.items()}},
        retry_after_s=error.retry_after_s,
    )


def operations_router(
    metrics: ComponentMetrics,
    checks: Mapping[str, Check],
    *,
    liveness: Callable[[], dict[str, object]] | None = None,
) -> APIRouter:
    """``/healthz`` (``liveness()``'s fields, never the database), ``/readyz`` (``checks``) and
    ``/metrics`` (rendered in a worker thread: collectors may read the database)."""
    router = APIRouter()

    @router.get("/healthz", **LIVENESS)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", **(liveness() if liveness else {})})

    @router.get("/readyz", **READINESS)
    async def readyz() -> JSONResponse:
        return await readiness(
            checks, on_database_unavailable=lambda: metrics.database_unavailable_at("readiness")
        )

    @router.get("/metrics", response_class=PlainTextResponse, **METRICS)
    async def metrics_endpoint() -> Response:
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE)

    return router
