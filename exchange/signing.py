"""Keys and detached JWS signatures (RFC 7515 App. F with RFC 7797 unencoded payload; EdDSA per
RFC 8037, or ES256).

One of the few modules allowed to import ``cryptography`` (style rule 14); everything
else signs and verifies through ``Signer`` / ``Verifier``. Keys of different trust domains are
different types: a ``CentralVerifier`` (the registry's signer) can never be handed where a
``MemberVerifier`` (an envelope's signer) is expected, and vice versa.

Every verification pins the algorithm to the key's own type (no ``alg`` confusion, no ``none``)
and fails with one opaque ``VerificationError`` (no oracle on why a signature is bad).

The compact JWS code is our own (about 60 lines) rather than PyJWT's: PyJWT re-parses and
re-validates the fixed header on every call, which cost a third of the signature work on the
exchange's hot path. PyJWT stays the interoperability reference in the tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils, x25519

from exchange.canonical import b64ud, b64ue
from exchange.errors import ConfigurationError, VerificationError

__all__ = [
    "Algorithm",
    "CentralSigner",
    "CentralVerifier",
    "EventSigner",
    "EventVerifier",
    "MemberSigner",
    "MemberVerifier",
    "PrivateKey",
    "PublicKey",
    "Signer",
    "TranslatorSigner",
    "TranslatorVerifier",
    "Verifier",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "public_key_from_pem",
    "public_key_pem",
    "save_private_key",
]

Algorithm = Literal["EdDSA", "ES256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
_OPAQUE = "signature verification failed"
MAX_HEADER_FORMS = 16  # distinct encodings of the one valid header a verifier remembers
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _b64u_strict(text: str) -> bytes:
    """Base64url without padding, refusing any character outside the alphabet (RFC 7515 §2)."""
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return b64ud(text)


class Signer(Protocol):
    kid: str

    def sign_detached(self, payload: bytes) -> str: ...


class Verifier(Protocol):
    kid: str

    def verify_detached(self, jws: str, payload: bytes) -> None: ...


def generate_private_key(alg: Algorithm = "EdDSA") -> PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def save_private_key(key: PrivateKey | x25519.X25519PrivateKey, path: Path) -> None:
    """Write a PKCS#8 PEM readable by the owner only (created 0600, never world-readable).

    Never replaces a key: an existing file is a ``ConfigurationError`` (a key that others pinned
    or that signed a log must not be silently swapped; rotation is a deliberate, separate act)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigurationError(f"{path} already holds a key; it is never replaced") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load private key {path.name}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"unsupported key type in {path.name}")
    return key


def public_key_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def public_key_from_pem(pem: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except ValueError as exc:
        raise VerificationError("unusable public key") from exc
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise VerificationError("unsupported curve")
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise VerificationError("unsupported key type")
    return key


def key_id(key: PublicKey) -> str:
    """``kid``: base64url SHA-256 of the SubjectPublicKeyInfo DER (stable, collision-resistant)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64ue(hashlib.sha256(der).digest())


def _alg_of(key: PrivateKey | PublicKey) -> Algorithm:
    return (
        "EdDSA"
        if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey)
        else "ES256"
    )


def _jws_sign(key: PrivateKey, data: bytes) -> bytes:
    """A JWS signature: raw 64 bytes for EdDSA (RFC 8037), ``r || s`` for ES256 (RFC 7518 §3.4)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _jws_verify(key: PublicKey, signature: bytes, data: bytes) -> None:
    """Verify a JWS signature (format as ``_jws_sign``); raises ``InvalidSignature`` or
    ``ValueError``."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
        return
    if len(signature) != 64:
        raise ValueError("an ES256 signature is 64 bytes")
    der = utils.encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))


def _protected_header(alg: Algorithm, kid: str, typ: str) -> dict[str, Any]:
    """The one header our detached JWS carry (RFC 7797 ``b64: false``, listed in ``crit``)."""
    return {"alg": alg, "b64": False, "crit": ["b64"], "kid": kid, "typ": typ}


class _Signer:
    """Signs detached-payload compact JWS (``header..signature``) over canonical bytes.

    RFC 7515 compact serialisation with an RFC 7797 unencoded payload: the signing input is
    ``BASE64URL(header) || '.' || payload``. The header is fixed per key, so it is encoded once;
    the output is byte for byte what PyJWT writes (``tests/conformance`` checks it verifies there).
    """

    def __init__(self, key: PrivateKey, *, typ: str) -> None:
        self._key = key
        self.alg: Algorithm = _alg_of(key)
        self.kid = key_id(key.public_key())
        self.typ = typ
        header = json.dumps(
            _protected_header(self.alg, self.kid, typ), separators=(",", ":"), sort_keys=True
        )
        self._header_b64 = b64ue(header.encode())
        self._prefix = self._header_b64.encode("ascii") + b"."

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_detached(self, payload: bytes) -> str:
        signature = _jws_sign(self._key, self._prefix + payload)
        return f"{self._header_b64}..{b64ue(signature)}"


class _Verifier:
    """Verifies a detached JWS with one public key; ``verify_detached`` returns None or raises.

    The protected header must be exactly ``{alg, b64: false, crit: ["b64"], kid, typ}`` with this
    key's algorithm, id and type: no other algorithm (no ``none``, no HMAC confusion), no other
    critical or unknown parameter, no attached payload."""

    def __init__(self, key: PublicKey, *, typ: str) -> None:
        self._key = key
        self.alg: Algorithm = _alg_of(key)
        self.kid = key_id(key)
        self.typ = typ
        self._expected = _protected_header(self.alg, self.kid, typ)
        self._accepted_headers: set[str] = set()  # header segments already found to be ours

    def verify_detached(self, jws: str, payload: bytes) -> None:
        try:
            header_b64, attached, signature_b64 = jws.split(".")
            if attached or not header_b64 or not signature_b64:
                raise VerificationError(_OPAQUE)
            if header_b64 not in self._accepted_headers:
                header = json.loads(_b64u_strict(header_b64))
                if header != self._expected or type(header.get("b64")) is not bool:
                    raise VerificationError(_OPAQUE)
                if len(self._accepted_headers) < MAX_HEADER_FORMS:
                    self._accepted_headers.add(header_b64)
            _jws_verify(
                self._key, _b64u_strict(signature_b64), header_b64.encode("ascii") + b"." + payload
            )
        except VerificationError:
            raise
        except (InvalidSignature, ValueError, TypeError, UnicodeError) as exc:
            raise VerificationError(_OPAQUE) from exc


class MemberSigner(_Signer):
    """A member subsystem's envelope signing key (lives in the node's data directory)."""

    def __init__(self, key: PrivateKey) -> None:
        super().__init__(key, typ="onceonly-envelope+jws")


class MemberVerifier(_Verifier):
    """Verifies envelopes with a member certificate's key taken from the verified registry."""

    def __init__(self, key: PublicKey) -> None:
        super().__init__(key, typ="onceonly-envelope+jws")


class CentralSigner(_Signer):
    """The central server's key: signs the global configuration only."""

    def __init__(self, key: PrivateKey) -> None:
        super().__init__(key, typ="onceonly-registry+jws")


class CentralVerifier(_Verifier):
    """The trust anchor: verifies the global configuration only."""

    def __init__(self, key: PublicKey) -> None:
        super().__init__(key, typ="onceonly-registry+jws")


class TranslatorSigner(_Signer):
    """The pseudonym translator's key: signs subject tokens only (docs/pseudonyms.md)."""

    def __init__(self, key: PrivateKey) -> None:
        super().__init__(key, typ="onceonly-subject-token+jws")


class TranslatorVerifier(_Verifier):
    """Verifies subject tokens with the translator key named in the verified registry."""

    def __init__(self, key: PublicKey) -> None:
        super().__init__(key, typ="onceonly-subject-token+jws")


class EventSigner(_Signer):
    """Signs events (``exchange.events``) with a key that is no member's: the consent service's
    issuer key, which the verified registry names. A ``typ`` of its own, so an event signature
    can never pass as an artefact, a receipt or an envelope."""

    def __init__(self, key: PrivateKey) -> None:
        super().__init__(key, typ="onceonly-event+jws")


class EventVerifier(_Verifier):
    """Verifies events signed by an ``EventSigner`` key named in the verified registry."""

    def __init__(self, key: PublicKey) -> None:
        super().__init__(key, typ="onceonly-event+jws")
