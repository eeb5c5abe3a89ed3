"""Consent status push (issue 17 item 2): every change of a consent's status is an event to the
nodes concerned — the consumer's subsystem and each provider subsystem of its services.

``ConsentEvents.publish`` is called by ``ConsentService`` inside the transaction of the change
(grant, pause, resume, revoke, expiry, spending), so the outbox row commits with the change or
not at all (``exchange.event_outbox``). The event says which consent, its new status and the
action — never the citizen, the purpose or the fields (the nodes concerned know the consent by its
id; nothing else needs to travel).

Signed by the consent service's issuer key as an ``EventSigner`` (its own JWS ``typ``), which the
nodes take from the verified central registry (docs/protocol.md §7).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from consent.artefact import ConsentIssuerKey
from consent.store import ConsentEventOutboxRow, ConsentEventStreamRow, ConsentRow
from exchange.errors import ClientError
from exchange.event_outbox import Outbox
from exchange.events import CONSENT_SERVICE_SENDER
from exchange.identifiers import ServiceId

__all__ = ["CONSENT_STATUS_EVENT", "ConsentEvents", "recipients_of"]

CONSENT_STATUS_EVENT = "consent.status/v1"


def recipients_of(row: ConsentRow) -> list[str]:
    """The consumer's subsystem, then each provider subsystem of the consent's services."""
    found = [row.client]
    for service in row.services:
        try:
            provider = str(ServiceId.parse(service).provider)
        except ClientError:
            continue
        if provider not in found:
            found.append(provider)
    return found


class ConsentEvents:
    """The consent service's outbox of status events."""

    def __init__(self, engine: Engine, key: ConsentIssuerKey) -> None:
        self.outbox = Outbox(
            engine,
            ConsentEventOutboxRow,
            ConsentEventStreamRow,
            sender=CONSENT_SERVICE_SENDER,
            signer=key.event_signer(),
        )

    def publish(self, session: Session, row: ConsentRow, action: str, now: datetime) -> None:
        data = {
            "consent_id": row.id,
            "status": row.status,
            "action": action,
            "version": row.version,
            "at": now.isoformat(),
        }
        for recipient in recipients_of(row):
            self.outbox.append(
                session, recipient=recipient, type=CONSENT_STATUS_EVENT, data=data, now=now
            )
