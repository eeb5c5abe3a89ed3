"""The baseline of benchmarks/exchange.py: a bare FastAPI forwarding hop, no security at all.

``backend`` answers a small JSON record; ``forwarder`` forwards each request to it with one shared
aiohttp session (the same client the nodes use). Run with uvicorn ``--app-dir benchmarks``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import Response

RECORD = b'{"address":"\\u6771\\u4eac\\u90fd\\u753a\\u7530\\u5e02","moved_in_on":"2001-01-19"}'

backend = FastAPI()


@backend.get("/record/{subject}")
async def record(subject: str) -> Response:
    return Response(RECORD, media_type="application/json")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        app.state.session = session
        yield


forwarder = FastAPI(lifespan=_lifespan)


@forwarder.get("/r1/{path:path}")
async def forward(path: str, request: Request) -> Response:
    upstream = os.environ["HOP_UPSTREAM"]
    subject = request.headers.get("x-onceonly-subject", "x")
    async with request.app.state.session.get(f"{upstream}/record/{subject}") as resp:
        body = await resp.read()
        return Response(body, status_code=resp.status, media_type="application/json")
