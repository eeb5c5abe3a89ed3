"""The signed consent artefact: a compact JWS (RFC 7515, EdDSA per RFC 8037) by the consent service.

Issue 5: a consent is issued as a signed artefact that the provider node verifies itself on every
exchange, and then checks against the consent store for revocation. The artefact says what was
granted; it never says whether the consent still holds (the store does).

Trust domains (style rule 7): ``ConsentIssuerKey`` / ``ConsentArtefactVerifier`` are their own
types, distinct from ``exchange.signing``'s member and central keys, and the JWS ``typ``
(``onceonly-consent+jws``) differs from the envelope's and the registry's, so even the same raw
key material can never make a consent verify as an envelope or the reverse.

Verification steps (``ConsentArtefactVerifier.verify``), each failing with one opaque
``VerificationError`` (rule 11, no oracle):

1. exactly three base64url parts, strict alphabet, bounded size — stops parser confusion;
2. the protected header is a JSON object with exactly ``alg``, ``typ``, ``kid`` — stops ``crit``
   and ``jwk``/``x5u`` key injection;
3. ``alg`` is pinned to ``EdDSA`` — stops ``alg:none`` (RFC 7515 A.5) and HS256 confusion;
4. ``typ`` is pinned to ``onceonly-consent+jws`` — stops cross-domain reuse of a signature;
5. ``kid`` is the issuer key's — stops a key of another trust domain;
6. the Ed25519 signature over ``header.payload`` verifies — stops forgery and alteration;
7. the payload parses as ``ConsentArtefactClaims`` — stops malformed claims.

Receipts (``consent.receipt``) are signed with the same key as compact JWS of their own type
(``onceonly-consent-receipt+jws``), so a receipt can never pass as an artefact nor the reverse;
``ConsentReceiptVerifier`` (its own type) checks them offline with the public key the consent
service publishes (``jwks()``, served at ``GET /consent/v1/keys``) — the same steps 1-6, then
(7') the payload is a JSON object holding the Kantara form and the ISO/IEC TS 27560 record.

Only this module (and ``exchange/signing.py``) may import ``cryptography`` (rule 14).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.canonical import b64ud, b64ue, canonical_json
from exchange.errors import ConfigurationError, VerificationError
from exchange.signing import EventSigner, key_id, save_private_key

__all__ = [
    "ARTEFACT_TYP",
    "MANDATE_TYP",
    "RECEIPT_TYP",
    "ConsentArtefactClaims",
    "ConsentArtefactVerifier",
    "ConsentIssuerKey",
    "ConsentReceiptVerifier",
    "sign_compact",
    "verify_compact",
]

ARTEFACT_TYP = "onceonly-consent+jws"
RECEIPT_TYP = "onceonly-consent-receipt+jws"
MANDATE_TYP = "onceonly-mandate+jws"
ALG = "EdDSA"
MAX_ARTEFACT_BYTES = 16 * 1024
MAX_RECEIPT_BYTES = 1024 * 1024
"""A receipt carries the consent's whole event history: bounded, but far above an artefact."""
_OPAQUE = "consent artefact verification failed"
_OPAQUE_RECEIPT = "consent receipt verification failed"
_B64U = re.compile(r"^[A-Za-z0-9_-]*$")


class ConsentArtefactClaims(BaseModel):
    """What the artefact asserts. Times are seconds since the epoch (as JWT ``nbf``/``exp``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    iss: str = Field(min_length=1, max_length=200)
    cid: str = Field(min_length=1, max_length=64)
    sub: str = Field(min_length=1, max_length=128)
    client: str = Field(min_length=1, max_length=300)
    services: tuple[str, ...] = Field(min_length=1)
    purpose: str = Field(min_length=1, max_length=64)
    fields: tuple[str, ...] = Field(min_length=1)
    nbf: int
    exp: int
    iat: int
    mode: str
    max_uses: int | None = None
    min_interval_s: int | None = None
    retention_days: int
    legal_text_version: str

    @property
    def valid_from(self) -> datetime:
        return datetime.fromtimestamp(self.nbf, UTC)

    @property
    def valid_until(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)


def _b64u_part(text: str) -> bytes:
    if not _B64U.match(text) or len(text) % 4 == 1:
        raise VerificationError(_OPAQUE)
    return b64ud(text)


def sign_compact(key: ConsentIssuerKey, protected_header: bytes, payload: bytes) -> str:
    """Sign ``payload`` as a compact JWS with the exact ``protected_header`` bytes given.

    The low-level primitive (used for the RFC 8037 A.4 vector); artefacts go through
    ``ConsentIssuerKey.sign_claims``, which builds the pinned header itself.
    """
    signing_input = f"{b64ue(protected_header)}.{b64ue(payload)}"
    signature = key._key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64ue(signature)}"


def verify_compact(
    public_key_raw: bytes,
    compact: str,
    *,
    required_header: dict[str, str],
    max_bytes: int = MAX_ARTEFACT_BYTES,
) -> bytes:
    """Verify a compact EdDSA JWS whose protected header is exactly ``required_header``.

    Returns the payload bytes or raises one opaque ``VerificationError``. ``required_header`` must
    contain ``alg``; ``alg`` other than ``EdDSA`` is never accepted (steps 1-6 of the module doc).
    """
    if required_header.get("alg") != ALG:
        raise ConfigurationError("only EdDSA consent artefacts exist")
    try:
        public_key = ed25519.Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError as exc:
        raise ConfigurationError("unusable Ed25519 public key") from exc
    # (1) shape: three strict base64url parts, bounded — parser confusion
    if len(compact) > max_bytes:
        raise VerificationError(_OPAQUE)
    parts = compact.split(".")
    if len(parts) != 3:
        raise VerificationError(_OPAQUE)
    header_b64, payload_b64, sig_b64 = parts
    try:
        header_raw = _b64u_part(header_b64)
        payload = _b64u_part(payload_b64)
        signature = _b64u_part(sig_b64)
        header = json.loads(header_raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(_OPAQUE) from exc
    # (2)-(5) header is exactly the pinned one: alg (none/HS256 confusion), typ (cross-domain
    # reuse), kid (another domain's key), nothing else (crit, jwk, x5u injection)
    if not isinstance(header, dict) or header != required_header:
        raise VerificationError(_OPAQUE)
    # (6) the signature — forgery and alteration
    if len(signature) != 64:
        raise VerificationError(_OPAQUE)
    try:
        public_key.verify(signature, f"{header_b64}.{payload_b64}".encode("ascii"))
    except InvalidSignature as exc:
        raise VerificationError(_OPAQUE) from exc
    return payload


class ConsentIssuerKey:
    """The consent service's signing key. Signs consent artefacts only."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, *, issuer: str) -> None:
        self._key = key
        self.issuer = issuer
        self.kid = key_id(key.public_key())

    @classmethod
    def generate(cls, *, issuer: str) -> ConsentIssuerKey:
        return cls(ed25519.Ed25519PrivateKey.generate(), issuer=issuer)

    @classmethod
    def from_seed(cls, seed: bytes, *, issuer: str) -> ConsentIssuerKey:
        """From a raw 32-byte Ed25519 seed (RFC 8037 ``d``)."""
        try:
            return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed), issuer=issuer)
        except ValueError as exc:
            raise ConfigurationError("consent issuer key must be a 32-byte Ed25519 seed") from exc

    @classmethod
    def from_pem(cls, pem: bytes, *, issuer: str) -> ConsentIssuerKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError("cannot load the consent issuer key") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigurationError("consent issuer key must be Ed25519")
        return cls(key, issuer=issuer)

    @classmethod
    def create(cls, path: Path, *, issuer: str) -> ConsentIssuerKey:
        """Provisioning only: a new key written to ``path`` (PEM, mode 0600). Refuses to replace
        a key that exists: the registry publishes its public key and artefacts carry its kid."""
        if path.exists():
            raise ConfigurationError(f"a consent issuer key already exists in {path}")
        save_private_key(ed25519.Ed25519PrivateKey.generate(), path)
        return cls.load(path, issuer=issuer)

    @classmethod
    def load(cls, path: Path, *, issuer: str) -> ConsentIssuerKey:
        """The PEM at ``path``; never made here (a missing key is an error)."""
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the consent issuer key {path}") from exc
        return cls.from_pem(pem, issuer=issuer)

    def private_key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_key_pem(self) -> str:
        """The PEM to publish in the central registry (``ConsentServiceEntry.issuer_public_key``)."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def event_signer(self) -> EventSigner:
        """The same key signing status events (``consent.events``): a JWS ``typ`` of its own, so
        an event never passes as an artefact or a receipt, nor one as an event."""
        return EventSigner(self._key)

    def verifier(self) -> ConsentArtefactVerifier:
        return ConsentArtefactVerifier.from_pem(self.public_key_pem())

    def receipt_verifier(self) -> ConsentReceiptVerifier:
        return ConsentReceiptVerifier.from_pem(self.public_key_pem())

    def sign_receipt(self, document: Mapping[str, Any]) -> str:
        """A receipt as a compact JWS: header ``{alg, kid, typ: onceonly-consent-receipt+jws}``
        and the receipt document, both RFC 8785 canonical JSON."""
        header = canonical_json({"alg": ALG, "kid": self.kid, "typ": RECEIPT_TYP})
        return sign_compact(self, header, canonical_json(dict(document)))

    def sign_mandate(self, claims: Mapping[str, Any]) -> str:
        """A mandate (``consent.mandates``): header ``{alg, kid, typ: onceonly-mandate+jws}``."""
        header = canonical_json({"alg": ALG, "kid": self.kid, "typ": MANDATE_TYP})
        return sign_compact(self, header, canonical_json(dict(claims)))

    def verify_mandate(self, jws: str) -> dict[str, Any]:
        """The claims of a mandate this key signed, or one opaque ``VerificationError``."""
        payload = verify_compact(
            _raw_public(self._key.public_key()),
            jws,
            required_header={"alg": ALG, "kid": self.kid, "typ": MANDATE_TYP},
        )
        try:
            claims = json.loads(payload)
        except ValueError as exc:
            raise VerificationError(_OPAQUE) from exc
        if not isinstance(claims, dict):
            raise VerificationError(_OPAQUE)
        return claims

    def sign_claims(self, claims: ConsentArtefactClaims) -> str:
        """The artefact: header ``{alg, kid, typ}`` and claims, both RFC 8785 canonical JSON."""
        header = canonical_json({"alg": ALG, "kid": self.kid, "typ": ARTEFACT_TYP})
        return sign_compact(self, header, canonical_json(claims.model_dump(mode="json")))


class ConsentArtefactVerifier:
    """Verifies consent artefacts with the consent service's public key (from the registry)."""

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.kid = key_id(key)

    @classmethod
    def from_pem(cls, pem: str) -> ConsentArtefactVerifier:
        try:
            key = serialization.load_pem_public_key(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ConfigurationError("unusable consent issuer public key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigurationError("consent issuer public key must be Ed25519")
        return cls(key)

    @classmethod
    def from_raw(cls, raw: bytes) -> ConsentArtefactVerifier:
        """From a raw 32-byte Ed25519 public key (RFC 8037 ``x``)."""
        try:
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise ConfigurationError("unusable consent issuer public key") from exc

    def verify(self, artefact: str) -> ConsentArtefactClaims:
        """Steps 1-7 of the module docstring; returns the verified claims or raises opaquely."""
        payload = verify_compact(
            self._raw,
            artefact,
            required_header={"alg": ALG, "kid": self.kid, "typ": ARTEFACT_TYP},
        )
        # (7) the claims — malformed or extra members
        try:
            return ConsentArtefactClaims.model_validate_json(payload)
        except ValidationError as exc:
            raise VerificationError(_OPAQUE) from exc


def _raw_public(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _jwk_key(jwk: object) -> ed25519.Ed25519PublicKey:
    """An Ed25519 public key from an RFC 8037 OKP JWK; its ``kid``, if any, must be ours."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ConfigurationError("not an Ed25519 JWK (kty OKP, crv Ed25519)")
    x = jwk.get("x")
    if not isinstance(x, str) or not _B64U.match(x):
        raise ConfigurationError("the JWK has no base64url x")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(b64ud(x))
    except ValueError as exc:
        raise ConfigurationError("unusable Ed25519 public key in the JWK") from exc
    if "kid" in jwk and jwk["kid"] != key_id(key):
        raise ConfigurationError("the JWK's kid is not the id of its key")
    return key


class ConsentReceiptVerifier:
    """Verifies signed consent receipts offline with the consent service's public key(s).

    A separate type from ``ConsentArtefactVerifier`` (another ``typ``): a receipt is evidence for
    the citizen, never a permission a provider acts on."""

    def __init__(self, keys: Sequence[ed25519.Ed25519PublicKey]) -> None:
        if not keys:
            raise ConfigurationError("a receipt verifier needs at least one key")
        self._keys = {key_id(k): _raw_public(k) for k in keys}

    @classmethod
    def from_pem(cls, pem: str) -> ConsentReceiptVerifier:
        try:
            key = serialization.load_pem_public_key(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ConfigurationError("unusable consent service public key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigurationError("the consent service public key must be Ed25519")
        return cls([key])

    @classmethod
    def from_jwks(cls, jwks: object) -> ConsentReceiptVerifier:
        """From a JWK Set (RFC 7517 §5) as ``GET /consent/v1/keys`` serves it."""
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list) or not keys:
            raise ConfigurationError("not a JWK Set with keys")
        return cls([_jwk_key(k) for k in keys])

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWK Set (RFC 7517, OKP per RFC 8037), to publish."""
        return {
            "keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": b64ue(raw), "kid": kid}
                | {"alg": ALG, "use": "sig"}
                for kid, raw in sorted(self._keys.items())
            ]
        }

    def verify(self, jws: str) -> dict[str, Any]:
        """Steps 1-6 with the receipt's ``typ``, then (7') the payload is a receipt document;
        returns it or raises one opaque ``VerificationError``."""
        kid = _unverified_kid(jws)
        raw = self._keys.get(kid or "")
        if kid is None or raw is None:  # (5) a key we do not hold: another domain's, a forgery
            raise VerificationError(_OPAQUE_RECEIPT)
        try:
            payload = verify_compact(
                raw,
                jws,
                required_header={"alg": ALG, "kid": kid, "typ": RECEIPT_TYP},
                max_bytes=MAX_RECEIPT_BYTES,
            )
            document = json.loads(payload)
        except (VerificationError, ValueError, UnicodeDecodeError) as exc:
            raise VerificationError(_OPAQUE_RECEIPT) from exc
        # (7') the document: the Kantara form beside the ISO/IEC TS 27560 record
        if not isinstance(document, dict) or not all(
            isinstance(document.get(k), dict) for k in ("kantara", "iso27560")
        ):
            raise VerificationError(_OPAQUE_RECEIPT)
        return document


def _unverified_kid(jws: str) -> str | None:
    """The ``kid`` a compact JWS claims, only to choose the key (the header is then pinned)."""
    head = jws[:MAX_RECEIPT_BYTES].split(".", 1)[0]
    try:
        header = json.loads(_b64u_part(head))
    except (VerificationError, ValueError, UnicodeDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None
