"""The signed summary of a finished procedure: what was changed where (issue 7 "Follow").

A certificate-like document the citizen can keep and anyone can check offline: the procedure, the
new address and move date, and per recipient the service, the basis (statute or consent id), the
fields sent, the final state and the SHA-256 of the registry's (verified) answer. It is signed by
the platform, i.e. the one-stop subsystem's member key, as a detached JWS over the RFC 8785
canonical JSON of the payload.

Domain separation: the payload carries ``domain = "onceonly-procedure-certificate"`` (as node
requests carry their own domain, ``exchange.node_requests``), so a certificate can never be
presented as an envelope or a node request, nor the reverse — those payloads have no such member.
Verification (``verify_certificate``) returns ``None`` or raises one opaque ``VerificationError``.

Trust assumption: the verifier obtains the one-stop subsystem's public key from the verified
central registry (its CA-issued certificate), not from the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exchange.canonical import canonical_json
from exchange.errors import VerificationError
from exchange.signing import Signer, Verifier

__all__ = ["CERTIFICATE_DOMAIN", "sign_certificate", "verify_certificate"]

CERTIFICATE_DOMAIN = "onceonly-procedure-certificate"
CERTIFICATE_VERSION = 1
_OPAQUE = "the procedure certificate does not verify"


def sign_certificate(payload: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """``{"payload": …, "kid": …, "signature": <detached JWS>}`` with the domain stamped in."""
    body = {**payload, "domain": CERTIFICATE_DOMAIN, "version": CERTIFICATE_VERSION}
    return {
        "payload": body,
        "kid": signer.kid,
        "signature": signer.sign_detached(canonical_json(body)),
    }


def verify_certificate(certificate: Mapping[str, Any], verifier: Verifier) -> None:
    """Check a certificate: (1) shape, (2) domain — stops cross-protocol reuse of a signature,
    (3) the signature over the canonical payload with the platform key — stops forgery and any
    edit of what it says was changed."""
    payload = certificate.get("payload")
    signature = certificate.get("signature")
    # (1) shape
    if not isinstance(payload, dict) or not isinstance(signature, str):
        raise VerificationError(_OPAQUE)
    # (2) domain
    if payload.get("domain") != CERTIFICATE_DOMAIN:
        raise VerificationError(_OPAQUE)
    # (3) signature
    try:
        verifier.verify_detached(signature, canonical_json(payload))
    except VerificationError as exc:
        raise VerificationError(_OPAQUE) from exc
