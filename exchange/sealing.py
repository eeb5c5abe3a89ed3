"""Sealing a short secret to one recipient's public key (docs/pseudonyms.md "Sealing").

An ECIES construction in the shape of HPKE's base mode (RFC 9180 §5.1, DHKEM(X25519) with
HKDF-SHA256 and AES-256-GCM), but *not* wire-compatible with HPKE:

* the sender makes an ephemeral X25519 key pair and computes the shared secret with the
  recipient's public key;
* HKDF-SHA256 (RFC 5869) derives a 32-byte AES key and a 12-byte nonce from the shared secret,
  salted with ``enc || recipient public key`` (binds the key to both ends) and with the info
  string ``onceonly-seal-v1``;
* AES-256-GCM encrypts the plaintext with the caller's associated data (the context the secret is
  valid in), so a sealed value cannot be moved into another context without failing to open.

Wire form: ``v1.`` + base64url(enc ‖ ciphertext ‖ tag), no padding. Every key is one-time (the
ephemeral one), so the derived nonce never repeats under a key.

Trust assumption: the recipient's public key comes from the verified central registry. Opening
fails with one opaque ``VerificationError`` whatever went wrong (no oracle). Like
``exchange.signing``, this is one of the few modules allowed to import ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange.errors import ConfigurationError, VerificationError
from exchange.signing import save_private_key

__all__ = [
    "MAX_SEALED_CHARS",
    "SEAL_KEY_BYTES",
    "SealingKey",
    "SealingPublicKey",
    "open_sealed",
    "seal",
]

SEAL_KEY_BYTES = 32
"""An X25519 public key, raw (RFC 7748)."""
MAX_SEALED_CHARS = 2048
"""Longest sealed value we try to open (a pseudonym pair seals to about 150 characters)."""
_PREFIX = "v1."
_INFO = b"onceonly-seal-v1"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_OPAQUE = "sealed value could not be opened"


def _b64ue(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64ud(text: str) -> bytes:
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64ue(raw) != text:  # one encoding per value: no malleable padding or alphabet
        raise ValueError("non-canonical base64url")
    return raw


@dataclass(frozen=True, slots=True)
class SealingPublicKey:
    """A recipient's X25519 public key, as published in the central registry (base64url)."""

    raw: bytes

    @classmethod
    def parse(cls, text: str) -> SealingPublicKey:
        try:
            raw = _b64ud(text)
            x25519.X25519PublicKey.from_public_bytes(raw)
        except (ValueError, binascii.Error, UnicodeError) as exc:
            raise ConfigurationError("not an X25519 public key") from exc
        if len(raw) != SEAL_KEY_BYTES:
            raise ConfigurationError("not an X25519 public key")
        return cls(raw)

    def __str__(self) -> str:
        return _b64ue(self.raw)


class SealingKey:
    """A recipient's X25519 private key (a provider subsystem's; lives in its data directory)."""

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self._key = key
        self.public_key = SealingPublicKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    @classmethod
    def generate(cls) -> SealingKey:
        return cls(x25519.X25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SealingKey:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot load the sealing key {path}") from exc
        if not isinstance(key, x25519.X25519PrivateKey):
            raise ConfigurationError(f"{path} is not an X25519 key")
        return cls(key)

    def save(self, path: Path) -> None:
        """Write the key (PKCS#8 PEM, mode 0600); refuses to overwrite an existing key."""
        if path.exists():
            raise ConfigurationError(f"{path} exists: a sealing key is never replaced silently")
        save_private_key(self._key, path)

    def open(self, sealed: str, *, aad: bytes) -> bytes:
        return open_sealed(self, sealed, aad=aad)

    def _exchange(self, enc: bytes) -> bytes:
        return self._key.exchange(x25519.X25519PublicKey.from_public_bytes(enc))


def _derive(shared: bytes, enc: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_BYTES + _NONCE_BYTES,
        salt=enc + recipient,
        info=_INFO,
    ).derive(shared)
    return okm[:_KEY_BYTES], okm[_KEY_BYTES:]


def seal(recipient: SealingPublicKey, plaintext: bytes, *, aad: bytes) -> str:
    """``plaintext`` readable only by the holder of ``recipient``'s private key, in ``aad``."""
    ephemeral = x25519.X25519PrivateKey.generate()
    enc = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(recipient.raw))
    key, nonce = _derive(shared, enc, recipient.raw)
    return _PREFIX + _b64ue(enc + AESGCM(key).encrypt(nonce, plaintext, aad))


def open_sealed(recipient: SealingKey, sealed: str, *, aad: bytes) -> bytes:
    """The plaintext, or ``VerificationError`` (one opaque reason for every failure)."""
    try:
        if len(sealed) > MAX_SEALED_CHARS or not sealed.startswith(_PREFIX):
            raise ValueError("not a sealed value")
        raw = _b64ud(sealed[len(_PREFIX) :])
        if len(raw) < SEAL_KEY_BYTES + _TAG_BYTES:
            raise ValueError("too short")
        enc, ciphertext = raw[:SEAL_KEY_BYTES], raw[SEAL_KEY_BYTES:]
        shared = recipient._exchange(enc)
        key, nonce = _derive(shared, enc, recipient.public_key.raw)
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError, binascii.Error, UnicodeError) as exc:
        raise VerificationError(_OPAQUE) from exc
