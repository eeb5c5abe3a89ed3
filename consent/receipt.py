"""Consent receipts (ISO/IEC TS 27560:2023, Kantara Consent Receipt Specification v1.1).

Issue 5: the citizen gets a receipt for each grant and each change of a consent, as JSON and as a
page they can save. The JSON uses the Kantara CR v1.1 field names (``version``, ``jurisdiction``,
``consentTimestamp``, ``collectionMethod``, ``consentReceiptID``, ``piiPrincipalId``,
``piiControllers``, ``policyUrl``, ``services[].purposes[]`` with ``purposeCategory``,
``consentType``, ``piiCategory``, ``primaryPurpose``, ``termination``, ``thirdPartyDisclosure``,
``thirdPartyName``, then ``sensitive`` and ``spiCat``), plus one extension object ``onceonly`` with
what TS 27560 records beyond v1.1 (the event, status, mode, window, retention, legal text version,
the purpose in both languages).

Trust assumption: the receipt is built from a consent the store holds; the HTML page is rendered by
Jinja2 with autoescaping on, so no consent text (which came from a consumer) can inject markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from consent.model import Consent, HistoryAction, Receipt

__all__ = ["KANTARA_VERSION", "ReceiptContext", "build_receipt", "render_receipt_html"]

KANTARA_VERSION = "KI-CR-v1.1.0"
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class ReceiptContext:
    """Who stands behind the receipts: the information bank and, per consumer, its display name."""

    jurisdiction: str = "JP"
    language: str = "ja"
    policy_url: str = "https://onceonly.example/consent/policy"
    collection_method: str = "citizen portal: approval of a consumer's consent request"
    bank_name: str = "onceonly information bank (情報銀行)"
    controller_names: Mapping[str, str] = field(default_factory=dict)
    """Display names of consumers by client id; the client id itself is used otherwise."""


def _termination(consent: Consent) -> str:
    until = consent.valid_until.isoformat()
    if consent.mode.value == "one-time":
        return f"after one use, on revocation, or at {until}, whichever comes first"
    limit = f"after {consent.max_uses} uses, " if consent.max_uses else ""
    return f"{limit}on revocation, or at {until}, whichever comes first"


def build_receipt(
    consent: Consent,
    action: HistoryAction,
    *,
    receipt_id: str,
    issued_at: datetime,
    context: ReceiptContext,
) -> Receipt:
    """The receipt for ``action`` on ``consent`` as it stands after the action."""
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
    document: dict[str, Any] = {
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
        "onceonly": {
            "consentId": consent.id,
            "event": action.value,
            "consentStatus": consent.status.value,
            "mode": consent.mode.value,
            "maxUses": consent.max_uses,
            "minIntervalSeconds": consent.min_interval_s,
            "validFrom": consent.valid_from.isoformat(),
            "validUntil": consent.valid_until.isoformat(),
            "dataRetentionDays": consent.data_retention_days,
            "legalTextVersion": consent.legal_text_version,
            "purposeCode": consent.purpose.code,
            "purposeTextJa": consent.purpose.text_ja,
            "purposeTextEn": consent.purpose.text_en,
            "informationBank": context.bank_name,
        },
    }
    return Receipt(
        id=receipt_id,
        consent_id=consent.id,
        action=action,
        issued_at=issued_at,
        document=document,
    )


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )


def render_receipt_html(receipt: Receipt) -> str:
    """A self-contained printable page (no external resources) in Japanese and English."""
    template = _environment().get_template("receipt.html")
    return template.render(receipt=receipt, doc=receipt.document, ext=receipt.document["onceonly"])
