"""The consent artefact JWS: RFC 8037 / RFC 7515 vectors, pinning, and trust-domain separation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consent.artefact import (
    ARTEFACT_TYP,
    ConsentArtefactVerifier,
    ConsentIssuerKey,
    sign_compact,
    verify_compact,
)
from consent.lifecycle import ConsentService
from exchange.canonical import b64ud, b64ue, canonical_json
from exchange.errors import ConfigurationError, VerificationError
from exchange.signing import MemberSigner, MemberVerifier, load_private_key
from tests import vectors
from tests.consent.conftest import GrantFn

RFC8037: dict[str, Any] = vectors.load("jws", "rfc8037-ed25519.json")
RFC7515: dict[str, Any] = vectors.load("jws", "rfc7515-appendix-a.json")
PUBLIC = bytes.fromhex(RFC8037["public_key_hex"])
ONLY_ALG = {"alg": "EdDSA"}


def test_rfc8037_a4_signature_is_reproduced_byte_for_byte() -> None:
    vector = RFC8037["A.4_sign"]
    key = ConsentIssuerKey.from_seed(bytes.fromhex(RFC8037["seed_hex"]), issuer="rfc8037")
    assert b64ue(bytes.fromhex(RFC8037["seed_hex"])) == RFC8037["A.1_private_key_jwk"]["d"]
    compact = sign_compact(
        key, vector["protected_header_utf8"].encode(), vector["payload_utf8"].encode()
    )
    assert compact == vector["compact"]
    assert compact.rsplit(".", 1)[1] == vector["signature_b64u"]


def test_rfc8037_a5_verifies_with_the_public_key() -> None:
    vector = RFC8037["A.5_verify"]
    assert b64ud(vector["public_key_jwk"]["x"]) == PUBLIC
    payload = verify_compact(PUBLIC, vector["compact"], required_header=ONLY_ALG)
    assert payload == RFC8037["A.4_sign"]["payload_utf8"].encode()


@pytest.mark.parametrize(
    "case", RFC8037["negative_cases"], ids=[c["desc"] for c in RFC8037["negative_cases"]]
)
def test_rfc8037_negative_cases_are_rejected(case: dict[str, Any]) -> None:
    assert case["expect_valid"] is False
    with pytest.raises(VerificationError, match=r"^consent artefact verification failed$"):
        verify_compact(PUBLIC, case["compact"], required_header=ONLY_ALG)


@pytest.mark.parametrize("vector", RFC7515["vectors"], ids=[v["id"] for v in RFC7515["vectors"]])
def test_rfc7515_appendix_a_tokens_of_other_algorithms_are_rejected(
    vector: dict[str, Any],
) -> None:
    """A.1-A.4 are valid JWS of other algorithms; A.5 is ``alg:none`` and must never pass."""
    with pytest.raises(VerificationError):
        verify_compact(PUBLIC, vector["compact"], required_header=ONLY_ALG)


def test_rfc7515_a5_alg_none_is_rejected_by_the_artefact_verifier() -> None:
    (a5,) = [v for v in RFC7515["vectors"] if v["id"] == "rfc7515-A.5"]
    with pytest.raises(VerificationError):
        ConsentArtefactVerifier.from_raw(PUBLIC).verify(a5["compact"])


def _reheadered(artefact: str, key: ConsentIssuerKey, header: dict[str, Any]) -> str:
    payload = b64ud(artefact.split(".")[1])
    return sign_compact(key, canonical_json(header), payload)


def test_the_artefact_header_is_pinned(service: ConsentService, grant: GrantFn) -> None:
    """A correctly signed artefact with any other header (typ, kid, crit, jwk) is refused."""
    consent = grant()
    key: ConsentIssuerKey = service._key
    good = {"alg": "EdDSA", "kid": key.kid, "typ": ARTEFACT_TYP}
    assert service.verifier.verify(_reheadered(consent.artefact, key, good)).cid == consent.id
    for header in (
        {**good, "typ": "onceonly-envelope+jws"},
        {**good, "kid": "someone-else"},
        {**good, "crit": ["exp"]},
        {**good, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64ue(PUBLIC)}},
        {"alg": "EdDSA", "kid": key.kid},
    ):
        with pytest.raises(VerificationError):
            service.verifier.verify(_reheadered(consent.artefact, key, header))


def test_malformed_artefacts_are_refused_with_one_opaque_error(
    service: ConsentService, grant: GrantFn
) -> None:
    consent = grant()
    details = set()
    for bad in ("", "a.b", "a.b.c.d", consent.artefact + "=", "!!.!!.!!", "x" * 20000):
        with pytest.raises(VerificationError) as info:
            service.verifier.verify(bad)
        details.add(info.value.detail)
    assert details == {"consent artefact verification failed"}


def test_a_consent_key_can_never_verify_an_envelope_nor_the_reverse(tmp_path: Path) -> None:
    """Even with the *same* key material in both trust domains, the signatures do not cross."""
    consent_key = ConsentIssuerKey.generate(issuer="JP/GOV/consent-bank")
    pem_path = tmp_path / "shared.pem"
    pem_path.write_bytes(consent_key.private_key_pem())
    member_signer = MemberSigner(load_private_key(pem_path))
    member_verifier = MemberVerifier(member_signer.public_key)
    assert member_verifier.kid == consent_key.kid  # same key, different domains

    payload = canonical_json({"cid": "x"})
    envelope_sig = member_signer.sign_detached(payload)
    header_b64 = envelope_sig.split(".")[0]
    attached = f"{header_b64}.{b64ue(payload)}.{envelope_sig.split('.')[2]}"
    with pytest.raises(VerificationError):
        consent_key.verifier().verify(attached)

    artefact = sign_compact(
        consent_key,
        canonical_json({"alg": "EdDSA", "kid": consent_key.kid, "typ": ARTEFACT_TYP}),
        payload,
    )
    h, p, s = artefact.split(".")
    with pytest.raises(VerificationError):
        member_verifier.verify_detached(f"{h}..{s}", b64ud(p))
    assert not hasattr(ConsentArtefactVerifier, "verify_detached")


def test_issuer_key_is_created_once_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "consent" / "issuer.key"
    made = ConsentIssuerKey.create(path, issuer="JP/GOV/consent-bank")
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigurationError):
        ConsentIssuerKey.create(path, issuer="JP/GOV/consent-bank")
    assert ConsentIssuerKey.load(path, issuer="JP/GOV/consent-bank").kid == made.kid


def test_a_missing_issuer_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "issuer.key"
    with pytest.raises(ConfigurationError):
        ConsentIssuerKey.load(path, issuer="JP/GOV/consent-bank")
    assert not path.exists()
