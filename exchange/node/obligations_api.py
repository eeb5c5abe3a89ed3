"""The obligations ledger's HTTP API at a node (docs/operator.md, "Obligations ledger").

- ``POST /obligations/{message_id}/deleted``: the departmental system confirms it deleted the data
  of one response (authenticated like its ``/r1`` calls: ``X-Road-Client`` and its API key).
- ``GET /audit/obligations``: auditors list the ledger, ``overdue=true`` only the overdue ones.

Both record into the node's audit log: the confirmation (kind ``obligation.deleted``) and each
overdue obligation once (kind ``obligation.overdue``), with the receiving agency's own subject
code and the message id, so that the citizen sees both next to the access in their record.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exchange.db import as_unavailable, finishing_thread
from exchange.identifiers import ClientId
from exchange.obligations import MAX_LIST, Obligation, ObligationsLedger
from exchange.ports import AuditDecision, AuditEvent, AuditKind
from exchange.tokens import Principal, TokenVerifier
from exchange.web.auth import bearer_principal
from exchange.web.openapi import API_KEY, documented
from exchange.web.refusals import RefusalRecorder, refusal_auditing_route

__all__ = ["OverdueObligations", "build_obligations_router", "sweep_overdue"]

SWEEP_INTERVAL_S = 60.0
"""How often a node records newly overdue obligations in its log (and the auditor API too)."""

Record = Callable[[AuditEvent], Awaitable[None]]

_OBLIGATION = {
    "type": "object",
    "required": ["client", "message_id", "service", "purpose", "delete_by", "onward"],
    "properties": {
        "client": {"type": "string"},
        "message_id": {"type": "string"},
        "service": {"type": "string"},
        "purpose": {"type": "string"},
        "delete_by": {"type": "string", "format": "date"},
        "onward": {"type": "boolean"},
        "received_at": {"type": "string", "format": "date-time"},
        "deleted_at": {"type": ["string", "null"], "format": "date-time"},
        "overdue": {"type": "boolean"},
    },
}


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _event(
    node: str, o: Obligation, kind: AuditKind, decision: AuditDecision, now: datetime
) -> AuditEvent:
    return AuditEvent(
        time=now,
        node=node,
        kind=kind,
        decision=decision,
        client=o.client,
        service=o.service,
        purpose=o.purpose,
        subject=o.subject,
        message_id=o.message_id,
        reason=(
            f"deleted on {now.date().isoformat()}"
            if kind == "obligation.deleted"
            else f"not deleted by {o.delete_by.isoformat()}"
        ),
        extra={"delete_by": o.delete_by.isoformat(), "onward": "yes" if o.onward else "no"},
    )


async def sweep_overdue(ledger: ObligationsLedger, record: Record, node: str, now: datetime) -> int:
    """Record each newly overdue obligation once in the log; the number recorded."""
    found = await finishing_thread(ledger.unreported_overdue, now)
    recorded = 0
    for o in found:
        if await finishing_thread(ledger.mark_reported, o.client, o.message_id, now):
            await record(_event(node, o, "obligation.overdue", "error", now))
            recorded += 1
    return recorded


class OverdueObligations(Collector):
    """``onceonly_obligations_overdue``: open obligations past their delete-by date (alert > 0)."""

    def __init__(self, ledger: ObligationsLedger, clock: Callable[[], datetime]) -> None:
        self._ledger = ledger
        self._clock = clock

    def collect(self) -> Any:
        gauge = GaugeMetricFamily(
            "onceonly_obligations_overdue",
            "Data received under usage terms and not confirmed deleted by its delete-by date",
        )
        try:
            count = self._ledger.count_overdue(self._clock())
        except Exception as exc:  # the database is away: the rest of /metrics still answers
            if as_unavailable(exc) is None:
                raise
            return
        gauge.add_metric([], count)
        yield gauge


def build_obligations_router(
    ledger: ObligationsLedger,
    *,
    node: str,
    authenticate: Callable[[Mapping[str, str]], Awaitable[ClientId]],
    record: Record,
    clock: Callable[[], datetime],
    auditors: TokenVerifier | None,
    refused: RefusalRecorder,
    clients: Sequence[str],
) -> APIRouter:
    router = APIRouter(route_class=refusal_auditing_route(refused))

    confirm_doc = documented(
        "confirmObligationDeleted",
        security=API_KEY,
        problems=(400, 401, 404, 503),
        responses={200: _json(_OBLIGATION, "the obligation, with its deletion time")},
    )
    # The client header as the exchange routes declare it: one of the subsystems hosted here
    # (read and checked by ``authenticate``, with the API key, from the raw headers).
    confirm_doc["openapi_extra"] = (confirm_doc["openapi_extra"] or {}) | {
        "parameters": [
            {
                "name": "X-Road-Client",
                "in": "header",
                "required": True,
                "description": "the departmental system (a subsystem hosted by this node) that "
                "received the data; its API key is presented",
                "schema": {"type": "string", "enum": sorted(clients)},
            }
        ]
    }

    @router.post("/obligations/{message_id}/deleted", **confirm_doc)
    async def confirm_deleted(
        request: Request,
        message_id: Annotated[str, Path(min_length=1, max_length=128)],
    ) -> dict[str, Any]:
        """The departmental system deleted the data it received in this message."""
        client = await authenticate({k.lower(): v for k, v in request.headers.items()})
        now = clock()
        before = await asyncio.to_thread(ledger.get, str(client), message_id)
        done = await asyncio.to_thread(ledger.confirm_deleted, str(client), message_id, now)
        if before is not None and before.deleted_at is None:
            await record(_event(node, done, "obligation.deleted", "info", now))
        return done.to_json(now)

    if auditors is not None:
        auditor = Annotated[Principal, bearer_principal(auditors, role="auditor")]

        @router.get(
            "/audit/obligations",
            **documented(
                "listObligations",
                problems=(400, 401, 403, 503),
                responses={
                    200: _json(
                        {
                            "type": "object",
                            "required": ["obligations"],
                            "properties": {"obligations": {"type": "array", "items": _OBLIGATION}},
                        },
                        "the ledger, the most recent first (the overdue: the oldest first)",
                    )
                },
            ),
        )
        async def list_obligations(
            _: auditor,
            overdue: bool = False,
            limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
        ) -> dict[str, Any]:
            now = clock()
            await sweep_overdue(ledger, record, node, now)
            rows = await asyncio.to_thread(
                ledger.overdue if overdue else ledger.listing, now, limit=limit
            )
            return {"obligations": [o.to_json(now) for o in rows]}

    return router
