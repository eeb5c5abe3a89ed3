"""RFC 8037 / RFC 7515 JWS vectors (../shared/vectors/jws) against exchange.signing's verifier.

The envelope verifier pins ``typ`` and ``kid`` and uses RFC 7797 detached payloads, so the RFC's
compact tokens are checked at the level they share with it: the EdDSA primitive reproduces the
RFC 8037 A.4 signature byte for byte, and the verifier refuses ``alg: none`` and HS256 confusion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.canonical import b64ud
from exchange.errors import VerificationError
from exchange.signing import MemberSigner, MemberVerifier

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "jws"
pytestmark = pytest.mark.skipif(
    not VECTORS.is_dir(), reason=f"conformance vectors not found at {VECTORS}"
)


def _load() -> dict[str, object]:
    return json.loads((VECTORS / "rfc8037-ed25519.json").read_text())  # type: ignore[no-any-return]


def _key() -> ed25519.Ed25519PrivateKey:
    jwk = _load()["A.1_private_key_jwk"]
    return ed25519.Ed25519PrivateKey.from_private_bytes(b64ud(jwk["d"]))  # type: ignore[index]


def test_rfc8037_a4_signature_is_reproduced() -> None:
    v = _load()["A.4_sign"]
    sig = _key().sign(v["signing_input"].encode())  # type: ignore[index]
    assert sig == b64ud(v["signature_b64u"])  # type: ignore[index]


def test_rfc8037_public_key_matches_private_key() -> None:
    x = _load()["A.2_public_key_jwk"]["x"]  # type: ignore[index]
    from cryptography.hazmat.primitives import serialization

    raw = (
        _key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert raw == b64ud(x)


def test_envelope_signature_with_rfc8037_key_verifies_and_tampering_fails() -> None:
    signer = MemberSigner(_key())
    verifier = MemberVerifier(_key().public_key())
    jws = signer.sign_detached(b"Example of Ed25519 signing")
    verifier.verify_detached(jws, b"Example of Ed25519 signing")
    with pytest.raises(VerificationError):
        verifier.verify_detached(jws, b"Example of Ed25519 signinG")


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_algorithm_downgrade_headers_are_refused(alg: str) -> None:
    import base64

    verifier = MemberVerifier(_key().public_key())
    header = (
        base64.urlsafe_b64encode(
            json.dumps(
                {
                    "alg": alg,
                    "kid": verifier.kid,
                    "typ": "onceonly-envelope+jws",
                    "b64": False,
                    "crit": ["b64"],
                }
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(VerificationError):
        verifier.verify_detached(f"{header}..", b"payload")


def test_rfc7515_none_vector_is_refused() -> None:
    doc = json.loads((VECTORS / "rfc7515-appendix-a.json").read_text())
    none = next(
        v for v in doc["vectors"] if "none" in json.dumps(v.get("protected_header_utf8", ""))
    )
    verifier = MemberVerifier(_key().public_key())
    with pytest.raises(VerificationError):
        verifier.verify_detached(none["compact"], none["payload_utf8"].encode())
