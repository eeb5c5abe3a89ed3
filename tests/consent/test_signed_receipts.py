"""Signed receipts (issue 15 item 5): the consent service signs each receipt as a JWS; anyone
verifies it offline with the published key alone (in code and with `onceonly consent
verify-receipt`), and every alteration is refused. The document holds the Kantara form and a full
ISO/IEC TS 27560 record side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consent.artefact import (
    ConsentArtefactVerifier,
    ConsentIssuerKey,
    ConsentReceiptVerifier,
)
from consent.iso27560 import SCHEMA_VERSION
from consent.lifecycle import ConsentService
from consent.model import Receipt
from consent.receipt import receipt_document, render_receipt_html
from exchange.canonical import b64ud, b64ue, canonical_json
from exchange.errors import ConfigurationError, VerificationError
from onceonly.cli import app
from tests.consent.conftest import GrantFn
from tests.consent.consent_factories import ALICE, T0

LATER = T0.replace(hour=10)
TS27560_HEADER = ("schema_version", "record_id", "receipt_id", "pii_principal_id")
TS27560_PROCESSING = ("privacy_notices", "language", "purposes")
TS27560_PURPOSE = (
    "purpose",
    "pii_information",
    "pii_controllers",
    "storage_locations",
    "retention_period",
    "jurisdiction",
    "recipient_third_parties",
    "withdrawal_method",
)
TS27560_PARTY = ("party_id", "party_name", "party_address", "party_contact", "party_type")
TS27560_EVENT = ("event_time", "validity_duration", "entity_id", "event_type", "event_state")


def _receipts(service: ConsentService, grant: GrantFn) -> list[Receipt]:
    consent = grant(mode="standing")
    service.pause(ALICE, consent.id, now=LATER)
    service.resume(ALICE, consent.id, now=LATER + timedelta(minutes=1))
    service.revoke(ALICE, consent.id, now=LATER + timedelta(minutes=2))
    return service.receipts(ALICE, consent.id, now=LATER + timedelta(minutes=3))


def _tampered_payload(jws: str) -> str:
    header, payload, signature = jws.split(".")
    document = json.loads(b64ud(payload))
    document["iso27560"]["pii_principal_id"] = "citizen-mallory"
    return f"{header}.{b64ue(canonical_json(document))}.{signature}"


def test_every_receipt_verifies_offline_with_the_public_key_alone(
    service: ConsentService, grant: GrantFn, issuer_key: ConsentIssuerKey
) -> None:
    receipts = _receipts(service, grant)
    published = ConsentReceiptVerifier.from_jwks(issuer_key.receipt_verifier().jwks())
    for receipt in receipts:
        assert receipt.jws is not None
        assert published.verify(receipt.jws) == receipt.document


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(_tampered_payload, id="payload-rewritten"),
        pytest.param(lambda j: j[:-4] + ("AAAA" if not j.endswith("AAAA") else "BBBB"), id="sig"),
        pytest.param(lambda j: j.split(".", 1)[1], id="two-parts"),
        pytest.param(
            lambda j: (
                b64ue(b'{"alg":"none","typ":"onceonly-consent-receipt+jws"}')
                + "."
                + j.split(".")[1]
                + "."
            ),
            id="alg-none",
        ),
    ],
)
def test_a_tampered_receipt_is_refused(
    service: ConsentService,
    grant: GrantFn,
    issuer_key: ConsentIssuerKey,
    tamper: Callable[[str], str],
) -> None:
    (first, *_) = _receipts(service, grant)
    assert first.jws is not None
    with pytest.raises(VerificationError):
        issuer_key.receipt_verifier().verify(tamper(first.jws))


def test_a_receipt_signed_by_another_key_is_refused(
    service: ConsentService, grant: GrantFn
) -> None:
    (first, *_) = _receipts(service, grant)
    other = ConsentIssuerKey.generate(issuer="someone-else")
    with pytest.raises(VerificationError):
        other.receipt_verifier().verify(first.jws or "")
    forged = other.sign_receipt(first.document)
    with pytest.raises(VerificationError):
        service.receipt_verifier.verify(forged)


def test_a_receipt_never_passes_as_an_artefact_nor_an_artefact_as_a_receipt(
    service: ConsentService, grant: GrantFn, issuer_key: ConsentIssuerKey
) -> None:
    consent = grant()
    (receipt,) = service.receipts(ALICE, consent.id, now=LATER)
    artefacts: ConsentArtefactVerifier = issuer_key.verifier()
    with pytest.raises(VerificationError):
        artefacts.verify(receipt.jws or "")
    with pytest.raises(VerificationError):
        issuer_key.receipt_verifier().verify(consent.artefact)


def test_a_jwk_whose_kid_is_not_its_key_is_refused(issuer_key: ConsentIssuerKey) -> None:
    (jwk,) = issuer_key.receipt_verifier().jwks()["keys"]
    with pytest.raises(ConfigurationError):
        ConsentReceiptVerifier.from_jwks({"keys": [jwk | {"kid": "another-kid"}]})


def test_the_receipt_holds_a_full_ts_27560_record_beside_the_kantara_form(
    service: ConsentService, grant: GrantFn
) -> None:
    receipts = _receipts(service, grant)
    last = receipts[-1].document
    assert set(last) == {"kantara", "iso27560"}
    assert last["kantara"]["version"] == "KI-CR-v1.1.0"
    record = last["iso27560"]
    assert record["schema_version"] == SCHEMA_VERSION
    assert all(record[f] for f in TS27560_HEADER)
    assert record["receipt_id"] == receipts[-1].id
    assert record["pii_principal_id"] == ALICE
    assert all(record["pii_processing"][f] for f in TS27560_PROCESSING)
    (purpose,) = record["pii_processing"]["purposes"]
    assert all(purpose[f] for f in TS27560_PURPOSE)
    assert [p["pii_type"] for p in purpose["pii_information"]] == ["address", "postal_code"]
    assert purpose["retention_period"] == "P90D"
    assert {p["party_type"] for p in record["parties"]} >= {"recipient", "data_source"}
    assert all(party[f] for party in record["parties"] for f in TS27560_PARTY)
    assert all(event[f] for event in record["events"] for f in TS27560_EVENT)
    states = [e["event_state"] for e in record["events"]]
    assert states == [
        "consent_given",
        "consent_paused",
        "renewed_consent_given",
        "consent_withdrawn",
    ]
    # each receipt records the events up to its own
    assert [len(r.document["iso27560"]["events"]) for r in receipts] == [1, 2, 3, 4]


def test_a_receipt_issued_before_signing_still_renders_and_says_it_is_unsigned(
    service: ConsentService, grant: GrantFn
) -> None:
    (first, *_) = _receipts(service, grant)
    old = dict(first.document["kantara"]) | {"onceonly": {"event": "granted"}}
    legacy = first.model_copy(update={"document": old, "jws": None})
    assert receipt_document(old) == {"kantara": first.document["kantara"], "iso27560": None}
    page = render_receipt_html(legacy)
    assert first.id in page
    assert "carries no signature" in page


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_verify_receipt_checks_a_receipt_offline_and_refuses_a_tampered_one(
    service: ConsentService, grant: GrantFn, issuer_key: ConsentIssuerKey, tmp_path: Path
) -> None:
    (first, *_) = _receipts(service, grant)
    assert first.jws is not None
    jwks = tmp_path / "consent-keys.jwks"
    jwks.write_text(json.dumps(issuer_key.receipt_verifier().jwks()))
    pem = tmp_path / "consent-key.pem"
    pem.write_text(issuer_key.public_key_pem())
    as_jws = tmp_path / "receipt.jws"
    as_jws.write_text(first.jws)
    as_json = tmp_path / "receipt.json"
    as_json.write_text(first.model_dump_json())
    for key in (jwks, pem):
        for receipt in (as_jws, as_json):
            code, output = _cli("consent", "verify-receipt", "--key", str(key), str(receipt))
            assert code == 0, output
            assert f"verified: receipt {first.id} of consent {first.consent_id}" in output
    tampered = tmp_path / "tampered.jws"
    tampered.write_text(_tampered_payload(first.jws))
    code, output = _cli("consent", "verify-receipt", "--key", str(jwks), str(tampered))
    assert code == 1
    assert "NOT verified" in output
