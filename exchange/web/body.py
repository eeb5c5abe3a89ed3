"""Reading a request body with a bound, before anything parses it (stops memory exhaustion)."""

from __future__ import annotations

from fastapi import Request

from exchange.errors import PayloadTooLargeError

__all__ = ["read_body"]


async def read_body(request: Request, *, limit: int) -> bytes:
    """The body, or ``PayloadTooLargeError`` (413 ``Client.PayloadTooLarge``) as soon as it
    (declared or streamed) exceeds ``limit``. The caller records the refusal: it raises inside
    the audited path of every route that reads a body."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLargeError("request body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError("request body too large")
        chunks.append(chunk)
    return b"".join(chunks)
