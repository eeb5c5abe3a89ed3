"""Canonical JSON (RFC 8785, JCS) and the hashes taken over it.

Everything that is signed — envelopes, the central registry document, consent artefacts, audit
entries — is signed over these bytes, so two implementations that agree on the JSON value agree on
the signature input. Trust assumption: the input is a JSON value built by us (str keys, no floats
that JCS would round differently from the sender).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import rfc8785

__all__ = ["b64d", "b64e", "b64ud", "b64ue", "canonical_json", "sha256", "sha256_b64"]


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` to RFC 8785 canonical JSON bytes."""
    out: bytes = rfc8785.dumps(value)
    return out


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_b64(data: bytes) -> str:
    """SHA-256, standard base64 with padding (the form hashes take on the wire)."""
    return b64e(sha256(data))


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def b64ue(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64ud(text: str) -> bytes:
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode((text + pad).encode("ascii"))
