"""RFC 8037 / RFC 7515 JWS vectors (tests/vectors/jws) against exchange.signing's verifier.

The envelope verifier pins ``typ`` and ``kid`` and uses RFC 7797 detached payloads, so the RFC's
compact tokens are checked at the level they share with it: the EdDSA primitive reproduces the
RFC 8037 A.4 signature byte for byte, and the verifier refuses ``alg: none`` and HS256 confusion.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.canonical import b64ud
from exchange.errors import VerificationError
from exchange.signing import MemberSigner, MemberVerifier
from tests import vectors


def _load() -> dict[str, object]:
    return vectors.load("jws", "rfc8037-ed25519.json")  # type: ignore[no-any-return]


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
    doc = vectors.load("jws", "rfc7515-appendix-a.json")
    none = next(
        v for v in doc["vectors"] if "none" in json.dumps(v.get("protected_header_utf8", ""))
    )
    verifier = MemberVerifier(_key().public_key())
    with pytest.raises(VerificationError):
        verifier.verify_detached(none["compact"], none["payload_utf8"].encode())


# --- our compact JWS code against the RFC vectors and against PyJWT (the interop reference) ----


def _compact_parts(compact: str) -> tuple[bytes, bytes]:
    header, payload, signature = compact.split(".")
    return f"{header}.{payload}".encode(), b64ud(signature)


def test_rfc8037_a5_and_negative_cases_through_our_primitive() -> None:
    from exchange.signing import _jws_verify

    doc = _load()
    public = ed25519.Ed25519PrivateKey.from_private_bytes(
        b64ud(doc["A.1_private_key_jwk"]["d"])  # type: ignore[index]
    ).public_key()
    data, sig = _compact_parts(doc["A.5_verify"]["compact"])  # type: ignore[index]
    _jws_verify(public, sig, data)
    for case in doc["negative_cases"]:  # type: ignore[attr-defined]
        data, sig = _compact_parts(case["compact"])
        with pytest.raises(Exception):  # noqa: B017, PT011 - InvalidSignature or ValueError
            _jws_verify(public, sig, data)


def test_rfc7515_a3_es256_signature_format_through_our_primitive() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from exchange.signing import _jws_sign, _jws_verify

    doc = vectors.load("jws", "rfc7515-appendix-a.json")
    v = next(x for x in doc["vectors"] if x["alg"] == "ES256")
    jwk = v["key_jwk"]
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64ud(jwk["x"]), "big"),
        int.from_bytes(b64ud(jwk["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    data, sig = _compact_parts(v["compact"])
    assert len(sig) == 64  # r || s, not DER
    _jws_verify(public, sig, data)
    private = ec.derive_private_key(int.from_bytes(b64ud(jwk["d"]), "big"), ec.SECP256R1())
    _jws_verify(public, _jws_sign(private, data), data)  # ECDSA is randomised: round trip
    with pytest.raises(Exception):  # noqa: B017, PT011
        _jws_verify(public, sig, data + b"x")


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_detached_jws_interoperates_with_pyjwt(alg: str) -> None:
    import jwt

    from exchange.signing import generate_private_key

    key = generate_private_key(alg)  # type: ignore[arg-type]
    signer, verifier = MemberSigner(key), MemberVerifier(key.public_key())
    payload = b'{"a":"\xe7\x94\xba\xe7\x94\xb0"}'
    ours = signer.sign_detached(payload)
    jwt.PyJWS().decode_complete(ours, key.public_key(), algorithms=[alg], detached_payload=payload)
    theirs = jwt.PyJWS().encode(
        payload,
        key,
        algorithm=alg,
        headers={"kid": verifier.kid, "typ": "onceonly-envelope+jws"},
        is_payload_detached=True,
    )
    verifier.verify_detached(theirs, payload)
    assert theirs.split(".")[0] == ours.split(".")[0]  # the same protected header, byte for byte
    if alg == "EdDSA":
        assert theirs == ours  # Ed25519 is deterministic


def _header_b64(header: dict[str, object]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "change",
    [
        {"b64": 0},  # equal to False in Python, not in JSON
        {"b64": True},
        {"crit": ["b64", "exp"]},
        {"x5u": "https://attacker.example/key"},  # no parameter beyond the pinned five
        {"typ": "onceonly-registry+jws"},
    ],
)
def test_headers_other_than_the_pinned_one_are_refused(change: dict[str, object]) -> None:
    key = _key()
    signer, verifier = MemberSigner(key), MemberVerifier(key.public_key())
    header = {
        "alg": "EdDSA",
        "b64": False,
        "crit": ["b64"],
        "kid": verifier.kid,
        "typ": "onceonly-envelope+jws",
    } | change
    h = _header_b64(header)
    sig = key.sign(f"{h}.".encode() + b"payload")
    from exchange.canonical import b64ue

    with pytest.raises(VerificationError):
        verifier.verify_detached(f"{h}..{b64ue(sig)}", b"payload")
    verifier.verify_detached(signer.sign_detached(b"payload"), b"payload")


def test_attached_payloads_and_non_base64url_signatures_are_refused() -> None:
    key = _key()
    signer, verifier = MemberSigner(key), MemberVerifier(key.public_key())
    header, _, sig = signer.sign_detached(b"payload").split(".")
    for bad in (
        f"{header}.cGF5bG9hZA.{sig}",
        f"{header}..{sig[:10]}!{sig[10:]}",
        f"{header}..{sig}=",
        f"{header}.{sig}",
    ):
        with pytest.raises(VerificationError):
            verifier.verify_detached(bad, b"payload")
