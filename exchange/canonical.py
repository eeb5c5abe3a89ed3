"""Canonical JSON (RFC 8785, JCS) and the hashes taken over it.

Everything that is signed — envelopes, the central registry document, consent artefacts, audit
entries — is signed over these bytes, so two implementations that agree on the JSON value agree on
the signature input. Trust assumption: the input is a JSON value built by us (str keys, no floats
that JCS would round differently from the sender).

Speed: ``rfc8785`` is pure Python (about 0.1 ms for an envelope, and every exchange canonicalises
several). For the values we sign in practice — objects, arrays, strings, safe integers, booleans
and null, with keys inside the Basic Multilingual Plane — RFC 8785's output is exactly what the C
``json`` encoder writes with sorted keys, no whitespace and no ASCII escaping: the same escapes
(``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other controls as lower-case ``\\u00xx``) and,
for BMP keys, the same key order (UTF-16 code units order BMP code points as Python does). Anything
else (floats, integers beyond 2**53, non-string keys, keys with astral characters) goes to
``rfc8785``; ``tests/exchange/test_canonical.py`` checks the two agree on generated values.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785

__all__ = ["b64d", "b64e", "b64ud", "b64ue", "canonical_json", "sha256", "sha256_b64"]


_SAFE_INT = 2**53 - 1
_ENCODE = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _plain(value: Any) -> bool:
    """True when the C encoder's output for ``value`` is its RFC 8785 form (see above)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or (not k.isascii() and max(k) > "\uffff"):
                return False
            if not _plain(v):
                return False
        return True
    if t is list or t is tuple:
        return all(_plain(v) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` to RFC 8785 canonical JSON bytes (lone surrogates are an error)."""
    if _plain(value):
        return _ENCODE(value).encode("utf-8")
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
