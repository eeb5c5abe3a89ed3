"""Consent receipts: the Kantara Consent Receipt v1.1 form beside the ISO/IEC TS 27560:2023 record.

Issue 5 and issue 15 item 5: the citizen gets a receipt for each grant and each change of a
consent. Its document holds two standard forms side by side, each complete and without private
extensions:

* ``kantara`` — the Kantara CR v1.1 fields (``version``, ``jurisdiction``, ``consentTimestamp``,
  ``collectionMethod``, ``consentReceiptID``, ``language``, ``piiPrincipalId``,
  ``piiControllers``, ``policyUrl``, ``services[].purposes[]`` with ``purposeCategory``,
  ``consentType``, ``piiCategory``, ``primaryPurpose``, ``termination``, ``thirdPartyDisclosure``,
  ``thirdPartyName``, then ``sensitive`` and ``spiCat``);
* ``iso27560`` — the full TS 27560 consent record (``consent.iso27560``): header, processing,
  parties and every event so far.

The consent service signs the document as a compact JWS (``ConsentIssuerKey.sign_receipt``,
``typ`` ``onceonly-consent-receipt+jws``); anyone verifies it offline with the service's published
key (``ConsentReceiptVerifier``, ``onceonly consent verify-receipt``). The receipt is served as
JSON (with its ``jws``), as the bare JWS, and as a page the citizen can save.

Trust assumption: the receipt is built from a consent the store holds; the HTML page is rendered by
Jinja2 with autoescaping on, so no consent text (which came from a consumer) can inject markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from consent.iso27560 import RecordEvent, RecordParties, build_record
from consent.model import Consent, HistoryAction, Receipt

__all__ = [
    "KANTARA_VERSION",
    "ReceiptContext",
    "build_receipt",
    "receipt_document",
    "render_receipt_html",
]

KANTARA_VERSION = "KI-CR-v1.1.0"
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class ReceiptContext:
    """Who stands behind the receipts: the information bank and, per consumer, its display name."""

    jurisdiction: str = "JP"
    language: str = "ja"
    policy_url: str = "https://onceonly.example/consent/policy"
    collection_method: str = "citizen portal: approval of a consumer's consent request"
    bank_id: str = "onceonly-information-bank"
    bank_name: str = "onceonly information bank (情報銀行)"
    bank_address: str = "onceonly central operator, see https://onceonly.example/consent/policy"
    withdrawal_method: str = (
        "citizen portal (同意の管理 / consents: revoke) or "
        "POST /consent/v1/consents/{id}/revoke with the citizen's token"
    )
    controller_names: Mapping[str, str] = field(default_factory=dict)
    """Display names of consumers (and provider members) by id; the id itself otherwise."""
    party_addresses: Mapping[str, str] = field(default_factory=dict)
    """Postal addresses of parties by id; otherwise the record names their registry entry."""

    def parties(self) -> RecordParties:
        return RecordParties(
            bank_id=self.bank_id,
            bank_name=self.bank_name,
            bank_address=self.bank_address,
            policy_url=self.policy_url,
            language=self.language,
            jurisdiction=self.jurisdiction,
            collection_method=self.collection_method,
            withdrawal_method=self.withdrawal_method,
            controller_names=self.controller_names,
            party_addresses=self.party_addresses,
        )


def _termination(consent: Consent) -> str:
    until = consent.valid_until.isoformat()
    if consent.mode.value == "one-time":
        return f"after one use, on revocation, or at {until}, whichever comes first"
    limit = f"after {consent.max_uses} uses, " if consent.max_uses else ""
    return f"{limit}on revocation, or at {until}, whichever comes first"


def _kantara(
    consent: Consent, receipt_id: str, issued_at: datetime, context: ReceiptContext
) -> dict[str, Any]:
    controller = context.controller_names.get(consent.client, consent.client)
    purpose = {
        "purpose": consent.purpose.text_en,
        "purposeCategory": [consent.purpose.code],
        "consentType": "EXPLICIT",
        "piiCategory": list(consent.fields),
        "primaryPurpose": True,
        "termination": _termination(consent),
        "thirdPartyDisclosure": True,
        "thirdPartyName": controller,
    }
    return {
        "version": KANTARA_VERSION,
        "jurisdiction": context.jurisdiction,
        "consentTimestamp": int(issued_at.timestamp()),
        "collectionMethod": context.collection_method,
        "consentReceiptID": receipt_id,
        "language": context.language,
        "piiPrincipalId": consent.subject,
        "piiControllers": [
            {
                "piiController": controller,
                "onBehalf": False,
                "contact": consent.client,
                "piiControllerUrl": context.policy_url,
            }
        ],
        "policyUrl": context.policy_url,
        "services": [{"service": s, "purposes": [purpose]} for s in consent.services],
        "sensitive": False,
        "spiCat": [],
    }


def build_receipt(
    consent: Consent,
    action: HistoryAction,
    *,
    receipt_id: str,
    issued_at: datetime,
    context: ReceiptContext,
    earlier: Sequence[RecordEvent] = (),
    actor: str = "system",
) -> Receipt:
    """The (unsigned) receipt for ``action`` by ``actor`` on ``consent`` as it stands after the
    action; ``earlier`` are the consent's events before it, oldest first (the TS 27560 record
    lists them all)."""
    events = [*earlier, RecordEvent(issued_at, action, actor)]
    document: dict[str, Any] = {
        "kantara": _kantara(consent, receipt_id, issued_at, context),
        "iso27560": build_record(consent, events, receipt_id=receipt_id, parties=context.parties()),
    }
    return Receipt(
        id=receipt_id,
        consent_id=consent.id,
        action=action,
        issued_at=issued_at,
        document=document,
    )


def receipt_document(document: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document in today's shape: one written before receipts carried the TS 27560
    record (Kantara fields at the top, a private ``onceonly`` object) keeps its Kantara form and
    has no record."""
    if "kantara" in document:
        return dict(document)
    return {"kantara": {k: v for k, v in document.items() if k != "onceonly"}, "iso27560": None}


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )


def render_receipt_html(receipt: Receipt, *, jws_url: str | None = None) -> str:
    """A self-contained printable page (no external resources) in Japanese and English, with the
    signed form (the JWS, and ``jws_url`` to download it when given)."""
    template = _environment().get_template("receipt.html")
    document = receipt_document(receipt.document)
    return template.render(
        receipt=receipt,
        kantara=document["kantara"],
        record=document["iso27560"],
        jws_url=jws_url,
    )
