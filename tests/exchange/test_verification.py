"""Attacks on the envelope and the registry, each refused (docs/protocol.md steps 1–8, C5, R1–R3)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from exchange.canonical import b64e, sha256_b64
from exchange.central_config import VerifiedRegistry, verify_registry
from exchange.certificates import certificate_pem, create_ca, issue_member_certificate
from exchange.db import make_engine, upgrade
from exchange.envelope import (
    RequestEnvelope,
    ResponseEnvelope,
    parse_unverified_request,
    parse_unverified_response,
    request_hash,
    seal,
    seal_request,
)
from exchange.errors import ConfigurationError, NotFoundError, ReplayError, VerificationError
from exchange.identifiers import ClientId, ServiceId
from exchange.keystore import KeyStore
from exchange.provisioning import init_instance, provision_subsystem
from exchange.registry_admin import RegistryAdmin
from exchange.replay import ReplayGuard
from exchange.signing import (
    CentralSigner,
    CentralVerifier,
    MemberSigner,
    generate_private_key,
    load_private_key,
    public_key_from_pem,
)
from exchange.verification import verify_request, verify_response

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CLIENT = ClientId.parse("JP/GOV/132098/municipal-tax")
PROVIDER = ClientId.parse("JP/GOV/132098/resident-registry")
SERVICE = ServiceId(PROVIDER, "address", "v1")
SKEW = 60


class World:
    def __init__(self, tmp: Path, engine: Engine) -> None:
        self.keys = KeyStore(tmp)
        init_instance(self.keys, "JP", now=NOW - timedelta(days=1))
        self.admin = RegistryAdmin(engine)
        self.admin.add_member(CLIENT.member, "町田市", address="http://node")
        for c in (CLIENT, PROVIDER):
            self.admin.add_subsystem(c)
            self.admin.add_certificate(
                c, provision_subsystem(self.keys, c, now=NOW - timedelta(days=1))
            )
        self.admin.add_service(SERVICE, fields=("address",), purposes=("taxation",))
        self.central = CentralSigner(load_private_key(self.keys.central_key))
        self.anchor = CentralVerifier(public_key_from_pem(self.keys.anchor.read_text()))
        self.client_signer = MemberSigner(load_private_key(self.keys.subsystem_key(CLIENT)))
        self.provider_signer = MemberSigner(load_private_key(self.keys.subsystem_key(PROVIDER)))

    def registry_bytes(self, now: datetime = NOW) -> bytes:
        return self.admin.publish(
            self.central,
            instance="JP",
            ca_pem=self.keys.ca_cert.read_text(),
            central_url="",
            now=now,
        ).to_bytes()

    def registry(self) -> VerifiedRegistry:
        return verify_registry(self.registry_bytes(), self.anchor, now=NOW)

    def envelope(self, body: bytes = b"", **changes: object) -> RequestEnvelope:
        values: dict[str, object] = {
            "message_id": "m-1",
            "created_at": NOW,
            "client": str(CLIENT),
            "service": str(SERVICE),
            "method": "GET",
            "path": "/",
            "purpose": "taxation",
            "subject": "S1",
            "body_hash": sha256_b64(body),
        }
        values.update(changes)
        return RequestEnvelope.model_validate(values)


@pytest.fixture
def world(tmp_path: Path) -> World:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    upgrade(engine)
    return World(tmp_path / "keys", engine)


def _verify(world: World, wire: bytes, now: datetime = NOW) -> object:
    return verify_request(
        parse_unverified_request(wire),
        registry=world.registry(),
        hosted=frozenset({PROVIDER}),
        now=now,
        max_skew_s=SKEW,
    )


def test_a_well_formed_signed_request_verifies(world: World) -> None:
    wire = seal(world.envelope(b"{}"), b"{}", world.client_signer)
    verified = _verify(world, wire)
    assert verified.client == CLIENT  # type: ignore[attr-defined]
    assert verified.request_hash == request_hash(world.envelope(b"{}"))  # type: ignore[attr-defined]


def test_seal_request_gives_the_hash_the_provider_computes(world: World) -> None:
    wire, sent_hash = seal_request(world.envelope(b"{}"), b"{}", world.client_signer)
    assert wire == seal(world.envelope(b"{}"), b"{}", world.client_signer)  # EdDSA: deterministic
    assert _verify(world, wire).request_hash == sent_hash  # type: ignore[attr-defined]


def test_tampered_body_is_refused(world: World) -> None:
    msg = json.loads(seal(world.envelope(b"{}"), b"{}", world.client_signer))
    msg["body"] = b64e(b'{"x":1}')
    with pytest.raises(VerificationError):
        _verify(world, json.dumps(msg).encode())


@pytest.mark.parametrize("field", ["purpose", "subject", "service", "path", "created_at"])
def test_tampered_envelope_field_is_refused(world: World, field: str) -> None:
    msg = json.loads(seal(world.envelope(), b"", world.client_signer))
    msg["envelope"][field] = {
        "purpose": "marketing",
        "subject": "S2",
        "service": str(SERVICE.unversioned),
        "path": "/other",
        "created_at": (NOW + timedelta(seconds=1)).isoformat(),
    }[field]
    with pytest.raises(VerificationError):
        _verify(world, json.dumps(msg).encode())


def test_signature_by_a_key_without_certificate_is_refused(world: World) -> None:
    rogue = MemberSigner(generate_private_key())
    with pytest.raises(VerificationError):
        _verify(world, seal(world.envelope(), b"", rogue))


def test_member_signing_as_another_subsystem_is_refused(world: World) -> None:
    # The provider's own valid key, claiming to be the tax client.
    with pytest.raises(VerificationError):
        _verify(world, seal(world.envelope(), b"", world.provider_signer))


def test_expired_certificate_is_refused(world: World, tmp_path: Path) -> None:
    ca_key = load_private_key(world.keys.ca_key)
    from exchange.certificates import load_certificate

    ca = load_certificate(world.keys.ca_cert.read_text())
    key = generate_private_key()
    old = issue_member_certificate(
        ca_key, ca, CLIENT, key.public_key(), now=NOW - timedelta(days=400)
    )
    world.admin.add_certificate(CLIENT, certificate_pem(old))
    with pytest.raises(VerificationError):
        _verify(world, seal(world.envelope(), b"", MemberSigner(key)))


def test_certificate_from_another_ca_is_refused(world: World) -> None:
    other_ca_key = generate_private_key()
    other_ca = create_ca(other_ca_key, "JP", now=NOW)
    key = generate_private_key()
    cert = issue_member_certificate(other_ca_key, other_ca, CLIENT, key.public_key(), now=NOW)
    world.admin.add_certificate(CLIENT, certificate_pem(cert))
    with pytest.raises(VerificationError):
        _verify(world, seal(world.envelope(), b"", MemberSigner(key)))


@pytest.mark.parametrize("offset_s", [-SKEW - 5, SKEW + 5])
def test_message_outside_clock_skew_is_refused(world: World, offset_s: int) -> None:
    wire = seal(
        world.envelope(created_at=NOW + timedelta(seconds=offset_s)), b"", world.client_signer
    )
    with pytest.raises(VerificationError):
        _verify(world, wire)


def test_service_not_hosted_here_is_refused(world: World) -> None:
    wire = seal(world.envelope(), b"", world.client_signer)
    with pytest.raises(NotFoundError):
        verify_request(
            parse_unverified_request(wire),
            registry=world.registry(),
            hosted=frozenset({CLIENT}),
            now=NOW,
            max_skew_s=SKEW,
        )


@pytest.mark.parametrize(
    "raw", [b"", b"{}", b"[]", b"not json", b'{"envelope":{},"signature":"a..b","body":""}']
)
def test_malformed_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(VerificationError):
        parse_unverified_request(raw)


def test_replayed_message_id_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    upgrade(engine)
    guard = ReplayGuard(engine, "JP/GOV/1", max_skew_s=SKEW)
    guard.remember(str(CLIENT), "m-1", now=NOW)
    with pytest.raises(ReplayError):
        guard.remember(str(CLIENT), "m-1", now=NOW)
    # Persisted, not in memory: a second guard (a restart, another replica) refuses it too.
    with pytest.raises(ReplayError):
        ReplayGuard(engine, "JP/GOV/1", max_skew_s=SKEW).remember(str(CLIENT), "m-1", now=NOW)
    guard.remember(str(PROVIDER), "m-1", now=NOW)  # ids are scoped by sender


def test_batched_replay_ids_accept_each_id_once(db_url: str) -> None:
    """One batch, one transaction (SQLite and PostgreSQL): a repeat inside the batch, an id seen
    in an earlier batch and another sender's equal id are told apart."""
    engine = make_engine(db_url)
    upgrade(engine)
    guard = ReplayGuard(engine, "JP/GOV/1", max_skew_s=SKEW)
    guard.remember(str(CLIENT), "old", now=NOW)
    got = guard.remember_many(
        [
            (str(CLIENT), "a", NOW),
            (str(CLIENT), "old", NOW),
            (str(CLIENT), "a", NOW),
            (str(PROVIDER), "a", NOW),
            (str(CLIENT), "b", NOW),
        ]
    )
    assert got == [True, False, False, True, True]
    with pytest.raises(ReplayError):
        guard.remember(str(CLIENT), "b", now=NOW)
    engine.dispose()


def test_a_replay_batch_that_fails_records_none_of_its_ids(pg_url: str) -> None:
    """PostgreSQL sends a batch as one statement in autocommit: atomic, so a batch that fails
    (here an id longer than the column) leaves none of its ids behind, and the connection it
    used goes back to the pool in a state the next batch can use."""
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    upgrade(engine)
    guard = ReplayGuard(engine, "JP/GOV/1", max_skew_s=SKEW)
    with pytest.raises(Exception, match="too long"):
        guard.remember_many([(str(CLIENT), "fine", NOW), (str(CLIENT), "x" * 200, NOW)])
    assert guard.remember_many([(str(CLIENT), "fine", NOW)]) == [True]
    assert guard.remember_many([(str(CLIENT), "fine", NOW)]) == [False]
    with engine.connect() as conn:  # committed: seen from another transaction
        assert conn.execute(text("SELECT count(*) FROM xchg_seen_messages")).scalar() == 1
    engine.dispose()


def test_pruning_forgets_only_ids_older_than_the_retention(db_url: str) -> None:
    """Ids written by the batched path are pruned by time like any other (same time encoding)."""
    engine = make_engine(db_url)
    upgrade(engine)
    guard = ReplayGuard(engine, "JP/GOV/1", max_skew_s=SKEW)
    old, recent = NOW - timedelta(hours=2), NOW - timedelta(seconds=SKEW)
    assert guard.remember_many([(str(CLIENT), "old", old), (str(CLIENT), "recent", recent)]) == [
        True,
        True,
    ]
    assert guard.prune(now=NOW) == 1
    assert guard.remember_many([(str(CLIENT), "old", NOW), (str(CLIENT), "recent", NOW)]) == [
        True,
        False,
    ]
    engine.dispose()


def test_concurrent_submissions_of_one_id_accept_exactly_one(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    upgrade(engine)
    guard = ReplayGuard(engine, "JP/GOV/1", max_skew_s=SKEW)

    async def race() -> list[BaseException | None]:
        return await asyncio.gather(
            *(guard.remember_async(str(CLIENT), "same", now=NOW) for _ in range(20)),
            return_exceptions=True,
        )

    outcomes = asyncio.run(race())
    assert outcomes.count(None) == 1
    assert all(isinstance(o, ReplayError) for o in outcomes if o is not None)
    engine.dispose()


def _response(world: World, request: RequestEnvelope, **changes: object) -> bytes:
    values: dict[str, object] = {
        "message_id": request.message_id,
        "request_hash": request_hash(request),
        "created_at": NOW,
        "provider": str(PROVIDER),
        "status": 200,
        "body_hash": sha256_b64(b"{}"),
    }
    values.update(changes)
    return seal(ResponseEnvelope.model_validate(values), b"{}", world.provider_signer)


def test_response_bound_to_the_request_verifies(world: World) -> None:
    req = world.envelope()
    verify_response(
        parse_unverified_response(_response(world, req)),
        request=req,
        sent_request_hash=request_hash(req),
        registry=world.registry(),
        now=NOW,
        max_skew_s=SKEW,
    )


@pytest.mark.parametrize(
    "changes",
    [{"request_hash": "A" * 88}, {"message_id": "m-other"}, {"provider": str(CLIENT)}],
    ids=["request-hash-mismatch", "message-id-mismatch", "other-provider"],
)
def test_response_not_bound_to_our_request_is_refused(
    world: World, changes: dict[str, object]
) -> None:
    req = world.envelope()
    with pytest.raises(VerificationError):
        verify_response(
            parse_unverified_response(_response(world, req, **changes)),
            request=req,
            sent_request_hash=request_hash(req),
            registry=world.registry(),
            now=NOW,
            max_skew_s=SKEW,
        )


def test_forged_registry_is_refused(world: World) -> None:
    doc = json.loads(world.registry_bytes())
    doc["document"]["access_rights"] = [{"client": "JP/COM/1/evil", "service": str(SERVICE)}]
    with pytest.raises(VerificationError):
        verify_registry(json.dumps(doc).encode(), world.anchor, now=NOW)


def test_registry_signed_by_another_key_is_refused(world: World) -> None:
    forged = world.admin.publish(
        CentralSigner(generate_private_key()),
        instance="JP",
        ca_pem=world.keys.ca_cert.read_text(),
        central_url="",
        now=NOW,
    )
    with pytest.raises(VerificationError):
        verify_registry(forged.to_bytes(), world.anchor, now=NOW)


def test_expired_registry_is_refused(world: World) -> None:
    raw = world.registry_bytes(now=NOW - timedelta(hours=1))
    with pytest.raises(ConfigurationError):
        verify_registry(raw, world.anchor, now=NOW)


def test_older_registry_serial_is_refused_as_rollback(world: World) -> None:
    raw = world.registry_bytes()
    serial = verify_registry(raw, world.anchor, now=NOW).serial
    with pytest.raises(VerificationError):
        verify_registry(raw, world.anchor, now=NOW, min_serial=serial + 1)
