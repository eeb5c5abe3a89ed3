"""Events between nodes (protocol §8): a member subsystem's event is verified with its certificate
in the verified registry, the way a provider verifies a request (steps 4a–4d), and is refused
when that certificate is revoked, when another member signs it, or when it names another sender.

Real keys, a real CA-issued certificate, a real signed and verified registry, a migrated inbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.central_config import VerifiedRegistry, verify_registry
from exchange.db import make_engine, upgrade
from exchange.errors import VerificationError
from exchange.event_inbox import Inbox
from exchange.events import new_event, sign_event
from exchange.identifiers import ClientId
from exchange.keystore import KeyStore
from exchange.ports import AuditEvent
from exchange.provisioning import init_instance, provision_subsystem
from exchange.registry_admin import RegistryAdmin
from exchange.signing import CentralSigner, CentralVerifier, MemberSigner, load_private_key

RESIDENTS = ClientId.parse("JP/GOV/132098/resident-registry")
TAX = ClientId.parse("JP/GOV/132098/tax")
GAS = ClientId.parse("JP/COM/9000000000002/gas")


class _Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


class _Instance:
    def __init__(self, tmp: Path, db_url: str) -> None:
        self.now = datetime.now(UTC)
        self.keys = KeyStore(tmp / "data")
        init_instance(self.keys, "JP", now=self.now)
        self.engine = make_engine(db_url)
        upgrade(self.engine)
        self.admin = RegistryAdmin(self.engine)
        self.admin.add_member(RESIDENTS.member, "町田市", address="http://machida")
        self.admin.add_member(GAS.member, "多摩ガス", address="http://gas")
        self.fingerprints = {}
        for c in (RESIDENTS, TAX, GAS):
            self.admin.add_subsystem(c)
            self.fingerprints[c] = self.admin.add_certificate(
                c, provision_subsystem(self.keys, c, now=self.now)
            )

    def registry(self) -> VerifiedRegistry:
        signed = self.admin.publish(
            CentralSigner(load_private_key(self.keys.central_key)),
            instance="JP",
            ca_pem=self.keys.ca_cert.read_text(),
            central_url="http://central",
            now=self.now,
        )
        anchor = CentralVerifier(CentralSigner(load_private_key(self.keys.central_key)).public_key)
        return verify_registry(signed.to_bytes(), anchor, now=self.now)

    def signer(self, client: ClientId) -> MemberSigner:
        return MemberSigner(load_private_key(self.keys.subsystem_key(client)))

    def event(self, sender: ClientId, *, seq: int = 1, claimed: ClientId | None = None) -> bytes:
        event = new_event(
            sender=str(claimed or sender),
            recipient=str(RESIDENTS),
            seq=seq,
            type="registry.changed/v1",
            data={"change": "address"},
            now=self.now,
        )
        return sign_event(event, self.signer(sender))


@pytest.fixture
def instance(tmp_path: Path, db_url: str) -> Iterator[_Instance]:
    inst = _Instance(tmp_path, db_url)
    yield inst
    inst.engine.dispose()


def _inbox(instance: _Instance, registry: VerifiedRegistry) -> tuple[Inbox, _Audit]:
    audit = _Audit()
    inbox = Inbox(
        instance.engine,
        hosted=frozenset({RESIDENTS}),
        audit=audit,
        node=str(RESIDENTS.member),
        max_skew_s=60,
        clock=lambda: instance.now,
    )
    inbox.on_registry(registry)
    return inbox, audit


def test_a_members_event_verifies_with_its_certificate_in_the_registry(instance: _Instance) -> None:
    inbox, audit = _inbox(instance, instance.registry())
    receipt = inbox.receive(instance.event(GAS))
    assert (receipt.stream, receipt.seq, receipt.status) == (f"{GAS} > {RESIDENTS}", 1, "applied")
    assert audit.events[-1].extra["sender"] == str(GAS)


@pytest.mark.parametrize(
    "attack",
    ["revoked certificate", "another member signs", "unknown sender"],
)
def test_an_event_from_a_sender_the_registry_does_not_vouch_for_is_refused(
    instance: _Instance, attack: Any
) -> None:
    if attack == "revoked certificate":
        instance.admin.revoke_certificate(instance.fingerprints[GAS])
        raw = instance.event(GAS)
    elif attack == "another member signs":
        raw = instance.event(TAX, claimed=GAS)  # TAX's key, claiming to be the gas company
    else:
        raw = sign_event(
            new_event(
                sender="JP/COM/123/nobody",
                recipient=str(RESIDENTS),
                seq=1,
                type="registry.changed/v1",
                data={},
                now=instance.now,
            ),
            instance.signer(GAS),
        )
    inbox, audit = _inbox(instance, instance.registry())
    with pytest.raises(VerificationError):
        inbox.receive(raw)
    assert [(e.kind, e.extra["stage"]) for e in audit.events] == [("refusal", "event")]
    assert inbox.cursor(f"{GAS} > {RESIDENTS}") == 0
