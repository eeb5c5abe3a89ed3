"""``GET /changes/v1``: the change events a departmental system's subscriptions received
(docs/protocol.md §9), for that system, with its API key.

Each change names the subscription, the event service, the system's **own** code for the person
(remembered when the system subscribed through this node; the publisher never learns it) and the
fields the subscription was allowed. The system reads after a cursor and keeps the last one it
processed: at-least-once up to the node, then as often as the system asks. Refusals (no or a
wrong API key, bad parameters) are recorded in the node's log, like every refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from exchange.identifiers import ClientId
from exchange.subscriptions import MAX_FEED_PAGE, Subscriptions
from exchange.web.openapi import API_KEY, documented, json_content
from exchange.web.refusals import RefusalRecorder, refusal_auditing_route

__all__ = ["CHANGES_PATH", "build_changes_router"]

CHANGES_PATH = "/changes/v1"
_CHANGE: dict[str, Any] = {
    "type": "object",
    "required": [
        "cursor",
        "event_id",
        "subscription_id",
        "service",
        "subject",
        "change",
        "occurred_at",
        "received_at",
    ],
    "properties": {
        "cursor": {"type": "integer", "minimum": 1},
        "event_id": {"type": "string"},
        "subscription_id": {"type": "string"},
        "service": {"type": "string"},
        "subject": {"type": ["string", "null"]},
        "change": {"type": "object"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "received_at": {"type": "string", "format": "date-time"},
    },
}


def build_changes_router(
    subscriptions: Subscriptions,
    *,
    authenticate: Callable[[Mapping[str, str]], Awaitable[ClientId]],
    refused: RefusalRecorder,
    clients: Sequence[str],
) -> APIRouter:
    router = APIRouter(route_class=refusal_auditing_route(refused), tags=["events"])
    doc = documented(
        "listChanges",
        security=API_KEY,
        problems=(400, 401, 503),
        responses={
            200: {
                "description": "the changes after the cursor, oldest first",
                "content": json_content(
                    {
                        "type": "object",
                        "required": ["changes", "cursor"],
                        "properties": {
                            "changes": {"type": "array", "items": _CHANGE},
                            "cursor": {"type": "integer", "minimum": 0},
                        },
                    }
                ),
            }
        },
    )
    doc["openapi_extra"] = (doc["openapi_extra"] or {}) | {
        "parameters": [
            {
                "name": "X-Road-Client",
                "in": "header",
                "required": True,
                "description": "the subscribing departmental system (hosted by this node)",
                "schema": {"type": "string", "enum": sorted(clients)},
            }
        ]
    }

    @router.get(CHANGES_PATH, **doc)
    async def list_changes(
        request: Request,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_FEED_PAGE)] = 100,
    ) -> dict[str, Any]:
        client = await authenticate({k.lower(): v for k, v in request.headers.items()})
        found = await asyncio.to_thread(subscriptions.feed, str(client), after=after, limit=limit)
        return {"changes": found, "cursor": found[-1]["cursor"] if found else after}

    return router
