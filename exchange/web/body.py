"""Reading a request body with a bound, before anything parses it (stops memory exhaustion)."""

from __future__ import annotations

from fastapi import Request

from exchange.errors import ClientError

__all__ = ["read_body"]


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, or ``Client.PayloadTooLarge`` as soon as it (declared or streamed) exceeds ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ClientError("request body too large", code="Client.PayloadTooLarge")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError("request body too large", code="Client.PayloadTooLarge")
        chunks.append(chunk)
    return b"".join(chunks)
