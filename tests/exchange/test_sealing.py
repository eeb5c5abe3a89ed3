"""Sealing to a recipient's X25519 key and the translator's subject tokens (docs/pseudonyms.md)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.errors import ConfigurationError, VerificationError
from exchange.sealing import SealingKey, SealingPublicKey, open_sealed, seal
from exchange.signing import TranslatorSigner, TranslatorVerifier, generate_private_key
from exchange.subject_token import (
    OpenedTokens,
    SealedSubject,
    SubjectTokenClaims,
    _signing_input,
    issue_subject_token,
    open_subject_token,
    peek_subject_token,
)

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
CLIENT = "JP/GOV/132098/municipal-tax"
SERVICE = "JP/GOV/132098/resident-registry/address/v1"
PROVIDER = "JP/GOV/132098/resident-registry"


def test_sealed_value_opens_only_with_the_recipients_key_and_context() -> None:
    alice, mallory = SealingKey.generate(), SealingKey.generate()
    sealed = seal(alice.public_key, b"R-0001", aad=b"ctx")
    assert alice.open(sealed, aad=b"ctx") == b"R-0001"
    assert b"R-0001" not in base64.urlsafe_b64decode(sealed[3:] + "==")
    with pytest.raises(VerificationError):
        mallory.open(sealed, aad=b"ctx")
    with pytest.raises(VerificationError):
        alice.open(sealed, aad=b"other ctx")


def test_sealing_twice_gives_unlinkable_values() -> None:
    key = SealingKey.generate()
    assert seal(key.public_key, b"x", aad=b"") != seal(key.public_key, b"x", aad=b"")


@pytest.mark.parametrize("index", [3, 10, 40, -1])
def test_a_tampered_sealed_value_does_not_open(index: int) -> None:
    key = SealingKey.generate()
    sealed = seal(key.public_key, b"secret", aad=b"a")
    flipped = "A" if sealed[index] != "A" else "B"
    with pytest.raises(VerificationError, match=r"^sealed value could not be opened$"):
        open_sealed(key, sealed[:index] + flipped + sealed[index + 1 :], aad=b"a")


@pytest.mark.parametrize("junk", ["", "v1.", "v2.AAAA", "v1.AA==", "v1." + "A" * 5000])
def test_junk_does_not_open(junk: str) -> None:
    with pytest.raises(VerificationError):
        open_sealed(SealingKey.generate(), junk, aad=b"")


def test_sealing_key_is_saved_private_and_never_replaced(tmp_path: Path) -> None:
    key = SealingKey.generate()
    path = tmp_path / "seal" / "k.key"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SealingKey.load(path).public_key == key.public_key
    with pytest.raises(ConfigurationError):
        SealingKey.generate().save(path)
    assert SealingPublicKey.parse(str(key.public_key)) == key.public_key
    with pytest.raises(ConfigurationError):
        SealingPublicKey.parse("not-a-key")


class _World:
    def __init__(self) -> None:
        private = generate_private_key("EdDSA")
        self.signer = TranslatorSigner(private)
        self.verifier = TranslatorVerifier(private.public_key())
        self.provider = SealingKey.generate()

    def token(self, *, citizen: str | None = None, ttl_s: int = 300, **over: str) -> str:
        fields = {"client": CLIENT, "service": SERVICE, "provider": PROVIDER, **over}
        return issue_subject_token(
            signer=self.signer,
            recipient=self.provider.public_key,
            subject=SealedSubject(subject="R-0001", citizen=citizen),
            now=NOW,
            ttl=timedelta(seconds=ttl_s),
            **fields,
        )

    def open(self, token: str, *, key: SealingKey | None = None, **over: object) -> SealedSubject:
        args: dict[str, object] = {
            "client": CLIENT,
            "service": SERVICE,
            "provider": PROVIDER,
            "now": NOW + timedelta(seconds=1),
            **over,
        }
        return open_subject_token(
            token,
            verifier=self.verifier,
            key=key or self.provider,
            max_skew_s=60,
            **args,  # type: ignore[arg-type]
        )


def test_provider_opens_its_code_and_the_consumer_sees_only_the_sealed_part() -> None:
    w = _World()
    token = w.token(citizen="C-1")
    assert w.open(token) == SealedSubject(subject="R-0001", citizen="C-1")
    claims = peek_subject_token(token)
    assert claims.citizen is True
    assert "R-0001" not in base64.urlsafe_b64decode(token).decode()
    assert "C-1" not in base64.urlsafe_b64decode(token).decode()


def test_another_provider_cannot_open_the_token() -> None:
    w = _World()
    with pytest.raises(VerificationError, match=r"^subject token verification failed$"):
        w.open(w.token(), key=SealingKey.generate())


@pytest.mark.parametrize(
    "over",
    [
        {"client": "JP/COM/9000000000002/gas"},
        {"service": "JP/GOV/132098/resident-registry/person/v1"},
        {"provider": "JP/GOV/132098/municipal-tax"},
    ],
)
def test_a_token_for_another_client_or_service_is_refused(over: dict[str, str]) -> None:
    w = _World()
    with pytest.raises(VerificationError):
        w.open(w.token(), **over)


def test_an_expired_or_future_token_is_refused() -> None:
    w = _World()
    with pytest.raises(VerificationError):
        w.open(w.token(ttl_s=300), now=NOW + timedelta(seconds=300))
    with pytest.raises(VerificationError):
        w.open(w.token(), now=NOW - timedelta(seconds=61))


def test_a_token_signed_by_another_key_or_with_altered_claims_is_refused() -> None:
    w, other = _World(), _World()
    forged = other.token()
    with pytest.raises(VerificationError):
        w.open(forged, key=other.provider)
    raw = json.loads(base64.urlsafe_b64decode(w.token()))
    raw["claims"]["expires_at"] = "2030-01-01T00:00:00Z"
    altered = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()
    with pytest.raises(VerificationError):
        w.open(altered)


def test_a_sealed_part_moved_into_another_token_does_not_open() -> None:
    w = _World()
    donor = json.loads(base64.urlsafe_b64decode(w.token(ttl_s=300)))
    target = json.loads(base64.urlsafe_b64decode(w.token(ttl_s=600)))
    assert donor["claims"]["expires_at"] != target["claims"]["expires_at"]
    target["claims"]["sealed"] = donor["claims"]["sealed"]
    # Re-signed by the translator itself, the moved part still fails its associated data.
    claims = SubjectTokenClaims.model_validate(target["claims"])
    target["signature"] = w.signer.sign_detached(_signing_input(claims))
    moved = base64.urlsafe_b64encode(json.dumps(target).encode()).decode()
    with pytest.raises(VerificationError):
        w.open(moved)


def test_a_remembered_token_is_still_checked_for_binding_and_expiry() -> None:
    w = _World()
    opened = OpenedTokens()
    token = w.token(ttl_s=300)
    args = {"verifier": w.verifier, "key": w.provider, "max_skew_s": 60}
    good = {"client": CLIENT, "service": SERVICE, "provider": PROVIDER}
    assert opened.open(token, now=NOW, **good, **args).subject == "R-0001"  # type: ignore[arg-type]
    assert opened.open(token, now=NOW, **good, **args).subject == "R-0001"  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        opened.open(token, now=NOW, **{**good, "client": "JP/COM/9000000000002/gas"}, **args)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        opened.open(token, now=NOW + timedelta(seconds=300), **good, **args)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):  # a forged token is never remembered as good
        opened.open(_World().token(), now=NOW, **good, **args)  # type: ignore[arg-type]
