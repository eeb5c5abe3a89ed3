"""Keys and detached JWS signatures (RFC 7515 App. F with RFC 7797 unencoded payload; EdDSA per
RFC 8037, or ES256).

One of the few modules allowed to import ``cryptography`` and ``jwt`` (style rule 14); everything
else signs and verifies through ``Signer`` / ``Verifier``. Keys of different trust domains are
different types: a ``CentralVerifier`` (the registry's signer) can never be handed where a
``MemberVerifier`` (an envelope's signer) is expected, and vice versa.

Every verification pins the algorithm to the key's own type (no ``alg`` confusion, no ``none``)
and fails with one opaque ``VerificationError`` (no oracle on why a signature is bad).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from exchange.canonical import b64ue
from exchange.errors import ConfigurationError, VerificationError

__all__ = [
    "Algorithm",
    "CentralSigner",
    "CentralVerifier",
    "MemberSigner",
    "MemberVerifier",
    "PrivateKey",
    "PublicKey",
    "Signer",
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


def save_private_key(key: PrivateKey, path: Path) -> None:
    """Write a PKCS#8 PEM readable by the owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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


class _Signer:
    """Signs detached-payload compact JWS (``header..signature``) over canonical bytes."""

    def __init__(self, key: PrivateKey, *, typ: str) -> None:
        self._key = key
        self.alg: Algorithm = _alg_of(key)
        self.kid = key_id(key.public_key())
        self.typ = typ
        self._jws = jwt.PyJWS(algorithms=[self.alg])

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_detached(self, payload: bytes) -> str:
        headers: dict[str, Any] = {"kid": self.kid, "typ": self.typ}
        token: str = self._jws.encode(
            payload, self._key, algorithm=self.alg, headers=headers, is_payload_detached=True
        )
        return token


class _Verifier:
    """Verifies a detached JWS with one public key; ``verify_detached`` returns None or raises."""

    def __init__(self, key: PublicKey, *, typ: str) -> None:
        self._key = key
        self.alg: Algorithm = _alg_of(key)
        self.kid = key_id(key)
        self.typ = typ
        self._jws = jwt.PyJWS(algorithms=[self.alg])

    def verify_detached(self, jws: str, payload: bytes) -> None:
        try:
            header = jwt.get_unverified_header(jws)
            if header.get("alg") != self.alg or header.get("typ") != self.typ:
                raise VerificationError(_OPAQUE)
            # PyJWT's detached mode is RFC 7797 (``b64: false``, ``crit: ["b64"]``); any other
            # critical extension is one we do not understand, so the JWS must be rejected.
            if header.get("kid") != self.kid or header.get("crit", ["b64"]) != ["b64"]:
                raise VerificationError(_OPAQUE)
            self._jws.decode_complete(
                jws, self._key, algorithms=[self.alg], detached_payload=payload
            )
        except VerificationError:
            raise
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
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
