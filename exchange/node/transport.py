"""Node-to-node HTTP transport on aiohttp (``exchange.ports.Transport``).

Chosen by measurement: docs/notes/perf-baselines.md has a forwarding hop at 3,200–3,900
req/s with a shared aiohttp session against 400–450 req/s with a shared httpx AsyncClient on this
machine (encode/httpx#3215). One session per node, created in the app's lifespan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from exchange.errors import TransportError
from exchange.ports import TransportResponse

__all__ = ["AiohttpTransport"]

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
CONNECTIONS_PER_HOST = 100


class AiohttpTransport:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=CONNECTIONS_PER_HOST)
            # No cookie jar: a peer's Set-Cookie is never stored nor sent back (nodes carry no
            # session state between messages, and a cookie would let one peer tag this node's
            # later requests); it also spares every request the jar's filtering.
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def _request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> TransportResponse:
        session = self._get_session()
        try:
            async with session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                data = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                if len(data) > MAX_RESPONSE_BYTES:
                    raise TransportError("peer response too large")
                return TransportResponse(resp.status, dict(resp.headers), data)
        except TimeoutError as exc:
            raise TransportError("peer timed out", code="Server.ServerProxy.Timeout") from exc
        except (aiohttp.ClientError, OSError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise TransportError("peer unreachable") from exc

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> TransportResponse:
        return await self._request("POST", url, body, headers, timeout_s)

    async def get(
        self, url: str, headers: Mapping[str, str], *, timeout_s: float
    ) -> TransportResponse:
        return await self._request("GET", url, None, headers, timeout_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
