"""Shared values and builders for the consent tests (imported by conftest and tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.model import Consent, ConsentRequestInput
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import AuditEvent, ConsentQuery

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
GAS = ClientId.parse("JP/COM/0100001/gas-billing")
POWER = ClientId.parse("JP/COM/0100002/power-billing")
ADDRESS = ServiceId.parse("JP/GOV/132098/resident-registry/address")
TAX = ServiceId.parse("JP/GOV/132098/tax/income")
ALICE = "citizen-alice"
BOB = "citizen-bob"


@dataclass
class ListAudit:
    """An ``AuditSink`` that keeps events in memory (the audit package is not ours to import)."""

    events: list[AuditEvent] = field(default_factory=list)

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def request_input(**over: Any) -> ConsentRequestInput:
    data: dict[str, Any] = {
        "subject": ALICE,
        "client": str(GAS),
        "services": [str(ADDRESS)],
        "purpose": {
            "code": "utility-address-change",
            "text_ja": "ガス契約の住所変更のため",
            "text_en": "To update the address on your gas contract",
        },
        "fields": ["address", "postal_code"],
        "valid_from": T0.isoformat(),
        "valid_until": (T0 + timedelta(days=30)).isoformat(),
        "mode": "one-time",
        "data_retention_days": 90,
        "legal_text_version": "2026-10",
    }
    data.update(over)
    return ConsentRequestInput.model_validate(data)


def query(consent: Consent, **over: Any) -> ConsentQuery:
    data: dict[str, Any] = {
        "consent_id": consent.id,
        "artefact": consent.artefact,
        "subject": consent.subject,
        "client": ClientId.parse(consent.client),
        "service": ServiceId.parse(consent.services[0]),
        "purpose": consent.purpose.code,
        "fields": consent.fields,
        "now": T0 + timedelta(minutes=5),
        "message_id": str(uuid.uuid4()),
    }
    data.update(over)
    return ConsentQuery(**data)
