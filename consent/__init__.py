"""Information-bank consent (DESIGN "Consent", issue 5): grants the citizen controls, as signed
artefacts the provider verifies itself and the consent store confirms on every exchange.

Modules: ``model`` (wire models), ``store`` (rows; Alembic branch ``consent``), ``lifecycle``
(``ConsentService``: requests, grant, pause/resume/revoke, expiry and spending, history, uses, and
the ``exchange.ports.ConsentGate``), ``artefact`` (the JWS of artefacts and receipts,
``ConsentIssuerKey`` / ``ConsentArtefactVerifier`` / ``ConsentReceiptVerifier``), ``receipt``
(signed receipts: the Kantara form beside the ISO/IEC TS 27560 record, JSON, JWS and HTML),
``iso27560`` (that record), ``remote`` (``RemoteConsentGate`` for provider nodes), ``api``
(``build_citizen_router``, ``build_gate_router``; imports FastAPI, so it is not re-exported here).
"""

from consent.artefact import (
    ConsentArtefactClaims,
    ConsentArtefactVerifier,
    ConsentIssuerKey,
    ConsentReceiptVerifier,
)
from consent.lifecycle import ConsentService
from consent.model import (
    Consent,
    ConsentHistoryEvent,
    ConsentMode,
    ConsentRequest,
    ConsentRequestInput,
    ConsentRequestStatus,
    ConsentStatus,
    ConsentUse,
    HistoryAction,
    Purpose,
    Receipt,
)
from consent.receipt import ReceiptContext, build_receipt, render_receipt_html
from consent.remote import RemoteConsentGate

__all__ = [
    "Consent",
    "ConsentArtefactClaims",
    "ConsentArtefactVerifier",
    "ConsentHistoryEvent",
    "ConsentIssuerKey",
    "ConsentMode",
    "ConsentReceiptVerifier",
    "ConsentRequest",
    "ConsentRequestInput",
    "ConsentRequestStatus",
    "ConsentService",
    "ConsentStatus",
    "ConsentUse",
    "HistoryAction",
    "Purpose",
    "Receipt",
    "ReceiptContext",
    "RemoteConsentGate",
    "build_receipt",
    "render_receipt_html",
]
