"""HTTP routes of events (docs/protocol.md §7): a node's inbox, and a sender's pull endpoint.

* ``POST /events/v1/inbox`` (a node): one signed event; authenticated by its signature (steps
  E1–E7 of ``exchange.events`` / ``exchange.event_inbox``), not by HTTP credentials. Answers 200
  ``{stream, seq, status: applied|duplicate, cursor}``; refusals are problem+json, audited; a gap
  is 409 ``Client.EventOutOfOrder`` with ``expected``, and starts a catch-up pull.
* ``GET {prefix}?after=N`` (a sender, e.g. the consent service): the caller's stream after its
  cursor, as signed events, for catch-up; the caller is a node request (N1–N3) and only ever gets
  its own stream.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from exchange.errors import ClientError
from exchange.event_inbox import MAX_BATCH_EVENTS, NODE_EVENTS_PATH, EventGapError, Inbox
from exchange.event_outbox import MAX_PULL, Outbox
from exchange.events import SignedEvent
from exchange.node_requests import VerifiedNodeRequest
from exchange.ports import AuditEvent, AuditSink
from exchange.web.body import read_body
from exchange.web.openapi import NODE_REQUEST, PUBLIC, documented, json_body, json_content
from exchange.web.problems import problem_for

__all__ = ["INBOX_PATH", "build_inbox_router", "build_node_pull_router", "build_pull_router"]

INBOX_PATH = "/events/v1/inbox"
_RECEIPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stream", "seq", "status", "cursor"],
    "properties": {
        "stream": {"type": "string"},
        "seq": {"type": "integer", "minimum": 1},
        "status": {"enum": ["applied", "duplicate"]},
        "cursor": {"type": "integer", "minimum": 0},
    },
}
_PULL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stream", "events"],
    "properties": {
        "stream": {"type": "string"},
        "events": {"type": "array", "items": SignedEvent.model_json_schema()},
    },
}

_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH_EVENTS,
            "items": SignedEvent.model_json_schema(),
        }
    },
}
MAX_DELIVERY_BYTES = 4 * 1024 * 1024

Authenticator = Callable[[Request, bytes], Awaitable[VerifiedNodeRequest]]


def build_inbox_router(inbox: Inbox, *, on_gap: Callable[[], None] | None = None) -> APIRouter:
    router = APIRouter(tags=["events"])

    @router.post(
        INBOX_PATH,
        **documented(
            "receiveEvent",
            security=PUBLIC,  # authenticated by the event's signature, steps E1–E7
            body=json_body(
                {"oneOf": [SignedEvent.model_json_schema(), _BATCH_SCHEMA]},
                description="one signed event, or consecutive events of one stream (protocol §8)",
            ),
            responses={
                200: {
                    "description": "applied, or already applied (a duplicate)",
                    "content": json_content(_RECEIPT_SCHEMA),
                }
            },
            problems=(400, 409, 413, 503),
        ),
    )
    async def receive(request: Request) -> JSONResponse:
        raw = await read_body(request, limit=MAX_DELIVERY_BYTES)
        try:
            receipt = await run_in_threadpool(inbox.receive_batch, _split(raw))
        except EventGapError as exc:
            if on_gap is not None:
                on_gap()
            response = problem_for(request, exc)
            body: dict[str, Any] = _json(response.body)
            body["expected"] = exc.expected
            return JSONResponse(
                body,
                status_code=exc.status,
                headers=_headers(response),
                media_type=response.media_type,
            )
        return JSONResponse(
            {
                "stream": receipt.stream,
                "seq": receipt.seq,
                "status": receipt.status,
                "cursor": receipt.cursor,
            }
        )

    return router


def build_pull_router(
    outbox: Outbox,
    authenticate_node: Authenticator,
    *,
    path: str,
    audit: AuditSink | None = None,
    route_class: Any = None,
) -> APIRouter:
    """``GET path?after=N&limit=M``: the calling node's own stream from ``outbox`` after N."""
    router = APIRouter(tags=["events"], **({"route_class": route_class} if route_class else {}))

    @router.get(
        path,
        **documented(
            "listEventsSince",
            security=NODE_REQUEST,
            responses={
                200: {
                    "description": "the caller's signed events after the cursor, in order",
                    "content": json_content(_PULL_SCHEMA),
                }
            },
            problems=(400, 401, 503),
        ),
    )
    async def since(
        request: Request,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PULL)] = MAX_PULL,
    ) -> JSONResponse:
        caller = await authenticate_node(request, b"")
        return await _pulled(
            outbox, outbox.sender, str(caller.client), after, limit, audit, node=outbox.sender
        )

    return router


def build_node_pull_router(
    outboxes: Mapping[str, Outbox],
    authenticate_node: Authenticator,
    *,
    audit: AuditSink,
    node: str,
    route_class: Any = None,
) -> APIRouter:
    """``GET /events/v1/streams?sender=S&after=N&limit=M`` at a node: the calling subsystem's own
    stream from ``S`` (a subsystem hosted here, e.g. a registry publishing change events) after
    N. The caller is a node request signed by the recipient subsystem (N1–N3); it only ever gets
    its own stream, and an unknown sender is an empty stream (no existence oracle)."""
    router = APIRouter(tags=["events"], **({"route_class": route_class} if route_class else {}))

    @router.get(
        NODE_EVENTS_PATH,
        **documented(
            "listNodeEventsSince",
            security=NODE_REQUEST,
            responses={
                200: {
                    "description": "the caller's signed events from the sender, after the cursor",
                    "content": json_content(_PULL_SCHEMA),
                }
            },
            problems=(400, 401, 503),
        ),
    )
    async def since(
        request: Request,
        sender: Annotated[str, Query(min_length=1, max_length=255)],
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PULL)] = MAX_PULL,
    ) -> JSONResponse:
        caller = await authenticate_node(request, b"")
        return await _pulled(
            outboxes.get(sender), sender, str(caller.client), after, limit, audit, node=node
        )

    return router


async def _pulled(
    outbox: Outbox | None,
    sender: str,
    caller: str,
    after: int,
    limit: int,
    audit: AuditSink | None,
    *,
    node: str,
) -> JSONResponse:
    """The caller's own stream from ``sender`` after ``after`` (empty when ``outbox`` is None: an
    unknown sender is no existence oracle); a pull that hands events over is a delivery, recorded
    in ``audit`` as ``node``'s before the answer."""
    wires = await run_in_threadpool(outbox.since, caller, after, limit=limit) if outbox else []
    stream = f"{sender} > {caller}"
    if audit is not None and wires:
        await run_in_threadpool(
            audit.record,
            AuditEvent(
                time=datetime.now(UTC),
                node=node,
                kind="event.delivered",
                decision="allow",
                client=caller,
                reason=f"pulled {len(wires)} after {after}",
                extra={"stream": stream, "via": "pull"},
            ),
        )
    return JSONResponse({"stream": stream, "events": [_json(w.encode()) for w in wires]})


def _split(raw: bytes) -> list[bytes]:
    """A delivery's events: ``{"events": [...]}`` is several, anything else is one (E1 judges)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return [raw]
    if isinstance(doc, dict) and set(doc) == {"events"} and isinstance(doc["events"], list):
        events = doc["events"]
        if not events or len(events) > MAX_BATCH_EVENTS:
            raise ClientError(f"a delivery holds 1 to {MAX_BATCH_EVENTS} events")
        return [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in events]
    return [raw]


def _json(raw: bytes | memoryview) -> Any:
    return json.loads(bytes(raw))


def _headers(response: Any) -> dict[str, str]:
    return {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in {"content-length", "content-type"}
    }
