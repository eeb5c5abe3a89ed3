"""``X-Road-Represented-Party`` on the wire (issue #16, item 4): signed in the envelope, verified
with it, recorded in both nodes' transparency logs, handed to the policy, refusals audited.

Real keys, a signed registry, real node apps, real transparency logs and the embedded Rego engine;
only the HTTP hop between the nodes is in memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from audit.sink import LogSink
from exchange.canonical import canonical_json, sha256_b64
from exchange.db import make_engine
from exchange.envelope import (
    RequestEnvelope,
    parse_unverified_request,
    request_hash,
    seal,
)
from exchange.errors import VerificationError
from exchange.identifiers import ServiceId
from exchange.keystore import KeyStore
from exchange.ports import PolicyInput
from exchange.provisioning import init_instance, provision_subsystem
from exchange.registry_admin import RegistryAdmin
from exchange.signing import (
    CentralSigner,
    CentralVerifier,
    MemberSigner,
    load_private_key,
    public_key_from_pem,
)
from exchange.verification import verify_request
from policies.document import input_document
from policies.embedded import EmbeddedRegoEngine
from policies.feed import PolicyFeed
from tests.exchange._federation import (
    ADDRESS,
    RESIDENTS,
    TAX,
    Federation,
    build_federation,
    node_client,
)

VECTOR = (
    Path(__file__).parents[1] / "vectors" / "envelope" / "request-without-represented-party.json"
)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PARTY = "PARENT/mdt-0123456789abcdef"


def test_an_envelope_without_a_represented_party_canonicalises_as_before_it_existed() -> None:
    vector = json.loads(VECTOR.read_text())
    env = RequestEnvelope.model_validate(vector["envelope"])
    dumped = env.model_dump(mode="json")
    assert "represented_party" not in dumped
    assert canonical_json(dumped).decode() == vector["canonical"]
    assert request_hash(env) == vector["request_hash"]


def test_a_represented_party_is_in_the_canonical_form_and_changes_the_request_hash() -> None:
    vector = json.loads(VECTOR.read_text())
    env = RequestEnvelope.model_validate({**vector["envelope"], "represented_party": PARTY})
    assert env.model_dump(mode="json")["represented_party"] == PARTY
    assert request_hash(env) != vector["request_hash"]


@pytest.mark.parametrize(
    "value", ["PARENT", "/mdt-1", "PARENT/", "PARENT/mdt 1", "PAR_ENT/mdt-1", "a/b/c"]
)
def test_a_malformed_represented_party_is_not_an_envelope(value: str) -> None:
    vector = json.loads(VECTOR.read_text())
    with pytest.raises(ValidationError, match="represented_party"):
        RequestEnvelope.model_validate({**vector["envelope"], "represented_party": value})


class _Keys:
    def __init__(self, tmp: Path) -> None:
        self.keys = KeyStore(tmp / "keys")
        init_instance(self.keys, "JP", now=NOW.replace(day=22))
        from exchange.db import upgrade

        engine = make_engine(f"sqlite:///{tmp / 'c.sqlite'}")
        upgrade(engine)
        self.engine = engine
        self.admin = RegistryAdmin(engine)
        self.admin.add_member(TAX.member, "町田市", address="http://node")
        self.service = ServiceId(RESIDENTS, "address", "v1")
        for c in (TAX, RESIDENTS):
            self.admin.add_subsystem(c)
            self.admin.add_certificate(
                c, provision_subsystem(self.keys, c, now=NOW.replace(day=22))
            )
        self.admin.add_service(self.service, fields=("address",), purposes=("taxation",))
        self.signer = MemberSigner(load_private_key(self.keys.subsystem_key(TAX)))

    def verify(self, wire: bytes) -> Any:
        from exchange.central_config import verify_registry

        registry = self.admin.publish(
            CentralSigner(load_private_key(self.keys.central_key)),
            instance="JP",
            ca_pem=self.keys.ca_cert.read_text(),
            central_url="",
            now=NOW,
        ).to_bytes()
        anchor = CentralVerifier(public_key_from_pem(self.keys.anchor.read_text()))
        return verify_request(
            parse_unverified_request(wire),
            registry=verify_registry(registry, anchor, now=NOW),
            hosted=frozenset({RESIDENTS}),
            now=NOW,
            max_skew_s=60,
        )


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[_Keys]:
    k = _Keys(tmp_path)
    yield k
    k.engine.dispose()


def _envelope(keys: _Keys, **changes: object) -> RequestEnvelope:
    values: dict[str, object] = {
        "message_id": "m-1",
        "created_at": NOW,
        "client": str(TAX),
        "service": str(keys.service),
        "method": "GET",
        "path": "/",
        "purpose": "taxation",
        "subject": "S1",
        "body_hash": sha256_b64(b""),
        **changes,
    }
    return RequestEnvelope.model_validate(values)


def test_the_signature_covers_the_represented_party(keys: _Keys) -> None:
    wire = seal(_envelope(keys, represented_party=PARTY), b"", keys.signer)
    assert keys.verify(wire).envelope.represented_party == PARTY

    def tampered(edit: Any) -> bytes:
        msg = json.loads(wire)
        edit(msg["envelope"])
        return json.dumps(msg).encode()

    attacks = {
        "changed": lambda e: e.__setitem__("represented_party", "GUARDIAN/mdt-other"),
        "removed": lambda e: e.pop("represented_party"),
    }
    for name, edit in attacks.items():
        with pytest.raises(VerificationError):
            keys.verify(tampered(edit))
        assert name
    # Added to a message signed without one: refused too.
    plain = json.loads(seal(_envelope(keys), b"", keys.signer))
    plain["envelope"]["represented_party"] = PARTY
    with pytest.raises(VerificationError):
        keys.verify(json.dumps(plain).encode())


def test_the_policy_input_carries_the_represented_party_as_class_and_code() -> None:
    base = PolicyInput(client=TAX, service=ADDRESS, purpose="p", subject="s", now=NOW)
    assert input_document(base)["represented_party"] is None  # type: ignore[index]
    doc = input_document(
        PolicyInput(
            client=TAX, service=ADDRESS, purpose="p", subject="s", now=NOW, represented_party=PARTY
        )
    )
    assert doc is not None
    assert doc["represented_party"] == {"class": "PARENT", "code": "mdt-0123456789abcdef"}


# --- through two real nodes ---------------------------------------------------------------------


@pytest.fixture
def fed(tmp_path: Path, db_url: str) -> Iterator[tuple[Federation, dict[str, TransparencyLog]]]:
    engine = make_engine(db_url)
    members = (RESIDENTS.member,)
    logs = {
        str(m): TransparencyLog(engine, log_id=str(m), signer=NoteSigner.generate(f"t/{m}"))
        for m in members
    }
    federation = build_federation(
        tmp_path,
        db_url,
        audits={m: LogSink(logs[str(m)], engine) for m in members},
        policy=PolicyFeed(EmbeddedRegoEngine()),
    )
    federation.admin.add_statute(
        "tax-domicile",
        service=ADDRESS,
        client=TAX,
        purposes=("tax-assessment",),
        fields=("address",),
        ordinance="jp-local-tax-act/art294",
    )
    federation.refresh()
    yield federation, logs
    federation.central_engine.dispose()
    engine.dispose()


def _call(fed: Federation, **extra: str) -> Any:
    async def go() -> Any:
        async with node_client(fed, TAX.member) as c:
            return await c.get(
                f"/r1/{ADDRESS}",
                headers={
                    "X-Road-Client": str(TAX),
                    "X-OnceOnly-Api-Key": fed.api_keys[TAX],
                    "X-OnceOnly-Purpose": "tax-assessment",
                    "X-OnceOnly-Subject": "sub-1",
                    **extra,
                },
            )

    return asyncio.run(go())


def _entries(log: TransparencyLog) -> list[dict[str, Any]]:
    return [json.loads(line)["entry"] for line in log.export()]


def test_the_represented_party_reaches_the_provider_its_policy_and_the_log(
    fed: tuple[Federation, dict[str, TransparencyLog]],
) -> None:
    federation, logs = fed
    r = _call(federation, **{"X-Road-Represented-Party": PARTY})
    assert r.status_code == 200, r.text
    assert r.headers["x-onceonly-basis"] == "statute:jp-local-tax-act/art294"
    # Machida's tax division and its resident registry share Machida's node (and log): the
    # consumer's request and response entries, then the provider's response entry.
    entries = _entries(logs[str(RESIDENTS.member)])
    assert [(e["kind"], e["represented_party"]) for e in entries] == [
        ("request", PARTY),
        ("response", PARTY),
        ("response", PARTY),
    ]
    # Without the header the entry has no such field (entries keep their earlier form).
    assert _call(federation).status_code == 200
    assert "represented_party" not in _entries(logs[str(RESIDENTS.member)])[-1]


def test_a_representation_kind_the_policy_does_not_know_is_refused_and_audited(
    fed: tuple[Federation, dict[str, TransparencyLog]],
) -> None:
    federation, logs = fed
    r = _call(federation, **{"X-Road-Represented-Party": "NEIGHBOUR/mdt-1"})
    assert r.status_code == 403, r.text
    assert "representation of kind NEIGHBOUR is not recognised" in r.json()["reasons"]
    entries = _entries(logs[str(RESIDENTS.member)])
    assert [(e["kind"], e["decision"], e["represented_party"]) for e in entries] == [
        ("request", "info", "NEIGHBOUR/mdt-1"),
        ("refusal", "deny", "NEIGHBOUR/mdt-1"),  # the provider's
        ("response", "deny", "NEIGHBOUR/mdt-1"),  # the consumer's, of the signed refusal
    ]


def test_a_malformed_header_is_refused_at_the_consumer_and_audited(
    fed: tuple[Federation, dict[str, TransparencyLog]],
) -> None:
    federation, logs = fed
    r = _call(federation, **{"X-Road-Represented-Party": "no slash"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "Client.InvalidIdentifier"
    refusal = _entries(logs[str(TAX.member)])[-1]
    assert (refusal["kind"], refusal["decision"]) == ("refusal", "deny")
    assert "X-Road-Represented-Party" in refusal["reason"]
    assert refusal["represented_party"] == "no slash"  # what was sent, as sent
