"""The consent record of ISO/IEC TS 27560:2023 ("Consent record information structure").

Issue 15 item 5: every receipt carries the full record beside the Kantara CR v1.1 form, with the
field names of the TS (its record header, PII processing, party and event sections, as the W3C DPV
guide "Consent Records and Receipts as per ISO/IEC TS 27560:2023" lists them), not in a private
extension. Mandatory fields of the TS are always present:

* header: ``schema_version``, ``record_id`` (the consent's id: one record per consent),
  ``receipt_id``, ``pii_principal_id``;
* processing (``pii_processing``): ``privacy_notices`` and ``language``, then per purpose
  ``purpose``, ``pii_information`` (``pii_type`` each), ``pii_controllers``,
  ``storage_locations``, ``retention_period``, ``jurisdiction``, ``recipient_third_parties``,
  ``withdrawal_method`` (and the optional ``purpose_type``, ``lawful_basis``,
  ``collection_method``, ``processing_method``, ``processing_locations``, ``services``);
* parties: ``party_id``, ``party_name``, ``party_address``, ``party_contact``, ``party_type`` (and
  ``party_role``, ``party_url``);
* events: ``event_time``, ``validity_duration``, ``entity_id``, ``event_type``, ``event_state``
  — one per grant and change so far, the last being the one this receipt is for.

Values the TS leaves open are ours and listed in docs/consent.md: event states follow DPV's
consent statuses (``consent_given``, ``renewed_consent_given``, ``consent_withdrawn``,
``consent_expired``) plus ``consent_paused`` and ``consent_spent``, which DPV does not name;
``usage_limits`` (one-time or standing, count and interval) has no TS field and is added to the
purpose. Times are RFC 3339 UTC, durations ISO 8601.

Trust assumption: built from a consent the store holds; it is signed as part of the receipt
(``consent.artefact.ConsentIssuerKey.sign_receipt``), never trusted from a caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consent.model import Consent, HistoryAction
from exchange.identifiers import ServiceId

__all__ = ["EVENT_STATES", "SCHEMA_VERSION", "RecordEvent", "RecordParties", "build_record"]

SCHEMA_VERSION = "ISO/IEC TS 27560:2023; onceonly-consent-record/1"
EVENT_STATES: dict[HistoryAction, str] = {
    HistoryAction.GRANTED: "consent_given",
    HistoryAction.RESUMED: "renewed_consent_given",
    HistoryAction.PAUSED: "consent_paused",
    HistoryAction.REVOKED: "consent_withdrawn",
    HistoryAction.EXPIRED: "consent_expired",
    HistoryAction.SPENT: "consent_spent",
}
"""The TS's event state of each change (DPV consent statuses where DPV has one)."""
EVENT_TYPE = "explicit_consent"
"""Every consent here is expressed by the citizen's own approval of a displayed request."""


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """One consent event of the record: when, what, and who caused it (the citizen's id, or
    ``system`` for an expiry or a spending)."""

    time: datetime
    action: HistoryAction
    actor: str


@dataclass(frozen=True, slots=True)
class RecordParties:
    """Who stands behind the record (``consent.receipt.ReceiptContext`` supplies it)."""

    bank_id: str
    bank_name: str
    bank_address: str
    policy_url: str
    language: str
    jurisdiction: str
    collection_method: str
    withdrawal_method: str
    controller_names: Mapping[str, str]
    party_addresses: Mapping[str, str]


def _time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _address(parties: RecordParties, party_id: str) -> str:
    return parties.party_addresses.get(
        party_id, f"registered in the onceonly central registry as {party_id}"
    )


def _purpose(consent: Consent, parties: RecordParties) -> dict[str, Any]:
    limits: dict[str, Any] = {"mode": consent.mode.value}
    if consent.max_uses is not None:
        limits["max_uses"] = consent.max_uses
    if consent.min_interval_s is not None:
        limits["min_interval"] = f"PT{consent.min_interval_s}S"
    return {
        "purpose": consent.purpose.text_en,
        "purpose_text": {"ja": consent.purpose.text_ja, "en": consent.purpose.text_en},
        "purpose_type": consent.purpose.code,
        "lawful_basis": "consent",
        "pii_information": [
            {"pii_type": f, "pii_attribute_id": f, "pii_optional": False, "sensitive": False}
            for f in consent.fields
        ],
        "pii_controllers": [consent.client],
        "collection_method": parties.collection_method,
        "processing_method": (
            "disclosure of these fields by the services listed to the recipient, in signed "
            "onceonly exchanges, each one checked with the consent service"
        ),
        "storage_locations": [parties.jurisdiction],
        "retention_period": f"P{consent.data_retention_days}D",
        "processing_locations": [parties.jurisdiction],
        "services": list(consent.services),
        "jurisdiction": parties.jurisdiction,
        "recipient_third_parties": [consent.client],
        "withdrawal_method": parties.withdrawal_method,
        "usage_limits": limits,
    }


def _parties(consent: Consent, parties: RecordParties) -> list[dict[str, Any]]:
    recipient = {
        "party_id": consent.client,
        "party_name": parties.controller_names.get(consent.client, consent.client),
        "party_address": _address(parties, consent.client),
        "party_contact": consent.client,
        "party_role": "pii_controller",
        "party_type": "recipient",
    }
    providers = sorted({str(ServiceId.parse(s).provider.member) for s in consent.services})
    sources = [
        {
            "party_id": member,
            "party_name": parties.controller_names.get(member, member),
            "party_address": _address(parties, member),
            "party_contact": member,
            "party_role": "pii_controller",
            "party_type": "data_source",
        }
        for member in providers
    ]
    bank = {
        "party_id": parties.bank_id,
        "party_name": parties.bank_name,
        "party_address": parties.bank_address,
        "party_contact": parties.policy_url,
        "party_url": parties.policy_url,
        "party_role": "pii_processor",
        "party_type": "consent_record_keeper",
    }
    return [recipient, *sources, bank]


def build_record(
    consent: Consent,
    events: Sequence[RecordEvent],
    *,
    receipt_id: str,
    parties: RecordParties,
) -> dict[str, Any]:
    """The TS 27560 record of ``consent`` after ``events`` (oldest first, the last is this
    receipt's), as a JSON object."""
    validity = f"{_time(consent.valid_from)}/{_time(consent.valid_until)}"
    return {
        "schema_version": SCHEMA_VERSION,
        "record_id": consent.id,
        "receipt_id": receipt_id,
        "pii_principal_id": consent.subject,
        "pii_processing": {
            "privacy_notices": [
                {
                    "notice_id": f"{parties.policy_url}#{consent.legal_text_version}",
                    "notice_url": parties.policy_url,
                    "notice_version": consent.legal_text_version,
                    "notice_languages": ["ja", "en"],
                }
            ],
            "language": parties.language,
            "purposes": [_purpose(consent, parties)],
        },
        "parties": _parties(consent, parties),
        "events": [
            {
                "event_time": _time(e.time),
                "validity_duration": validity,
                "entity_id": e.actor,
                "event_type": EVENT_TYPE,
                "event_state": EVENT_STATES[e.action],
            }
            for e in events
        ],
        "consent_status": consent.status.value,
    }
