"""Builds a real portal world for the tests (not a test module): a migrated database, a consent
service whose audit sink is its own transparency log (the consent log), exchanges appended for two
citizens in the node logs, signed checkpoints, the development issuer, and the portal mounted under
``/portal``."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Mount

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from consent.artefact import ConsentIssuerKey
from consent.lifecycle import ConsentService
from consent.model import Consent, ConsentRequest
from exchange.db import make_engine, upgrade
from exchange.identifiers import ClientId
from exchange.ports import AuditEvent
from exchange.settings import Settings
from exchange.tokens import DevIssuer, Principal
from portal import build_portal
from portal.local import LocalConsent, LocalLog, local_logs
from tests.consent.consent_factories import ALICE, BOB, POWER, request_input

NODE = "JP/GOV/132098"
CONSENT_LOG = "consent-service"
PRIVATE_NODE = "JP/COM/0100001"
TAX = "JP/GOV/132098/tax"
WATER = "JP/GOV/132098/water-bureau"
ADDRESS_SERVICE = "JP/GOV/132098/resident-registry/address"
PSEUDONYMS = {ALICE: "ps-alice", BOB: "ps-bob"}
DEMO_CITIZENS = ((ALICE, "山田 花子"), (BOB, "佐藤 太郎"))
SECRET = "portal-test-secret-0123456789abcdef"


def subjects_of(principal: Principal) -> Collection[str]:
    """The citizen's pseudonym at the registries, and their own id (consent changes)."""
    pseudonym = PSEUDONYMS.get(principal.subject)
    return {principal.subject, pseudonym} if pseudonym else {principal.subject}


def exchange_event(
    when: datetime, subject: str, *, client: str = TAX, decision: str = "allow", **over: Any
) -> AuditEvent:
    data: dict[str, Any] = {
        "time": when,
        "node": f"{NODE}/resident-registry",
        "kind": "response" if decision == "allow" else "refusal",
        "decision": decision,
        "client": client,
        "service": ADDRESS_SERVICE,
        "purpose": "tax-assessment",
        "subject": subject,
        "message_id": f"msg-{subject}-{when.timestamp()}",
        "body_hash": "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
        "basis": "地方税法第294条",
    }
    data.update(over)
    return AuditEvent(**data)


@dataclass
class World:
    app: Starlette
    portal: FastAPI
    consent: ConsentService
    logs: dict[str, TransparencyLog]
    consent_log: TransparencyLog
    issuer: DevIssuer
    alice_consent: Consent
    alice_second: Consent
    bob_consent: Consent
    alice_request: ConsentRequest
    now: datetime

    @property
    def log(self) -> TransparencyLog:
        return self.logs[NODE]


def build_world(db_url: str, log_db_url: str, tmp_path: Path, **portal: Any) -> World:
    """``log_db_url`` is another database: the consent service writes its audit event inside
    its own transaction, which SQLite's single writer cannot share with the log's. ``portal``
    goes to ``build_portal`` (a clock, a session lifetime, …)."""
    engine = make_engine(db_url)
    upgrade(engine)
    log_engine = make_engine(log_db_url)
    upgrade(log_engine)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=3)
    log = TransparencyLog(
        log_engine, log_id=NODE, signer=NoteSigner.generate(f"onceonly.test/{NODE}")
    )
    private = TransparencyLog(
        log_engine, log_id=PRIVATE_NODE, signer=NoteSigner.generate(f"onceonly.test/{PRIVATE_NODE}")
    )
    consent_log = TransparencyLog(
        log_engine,
        log_id=CONSENT_LOG,
        signer=NoteSigner.generate(f"onceonly.test/{CONSENT_LOG}/audit"),
    )
    service = ConsentService(
        engine,
        issuer_key=ConsentIssuerKey.generate(issuer="JP/GOV/consent-bank"),
        audit=consent_log,
        node=CONSENT_LOG,
    )
    window = {
        "valid_from": (now - timedelta(hours=1)).isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
    }

    def grant(subject: str, **over: Any) -> Consent:
        terms = request_input(subject=subject, **window, **over)
        req = service.create_request(ClientId.parse(terms.client), terms, now=now)
        return service.approve_request(subject, req.id, now=now)

    alice_consent = grant(ALICE)
    alice_second = grant(ALICE, client=str(POWER), mode="standing")
    bob_consent = grant(BOB)
    pending_terms = request_input(subject=ALICE, client=str(POWER), fields=["address"], **window)
    alice_request = service.create_request(POWER, pending_terms, now=now)
    log.append_many(
        [
            exchange_event(start, "ps-alice"),
            exchange_event(start + timedelta(days=1), "ps-alice", client=WATER, purpose="water"),
            exchange_event(
                start + timedelta(days=2), "ps-alice", client=WATER, decision="deny", basis=None
            ),
            exchange_event(start + timedelta(days=1), "ps-bob", client="JP/GOV/132098/secret-org"),
        ]
    )
    private.append(
        exchange_event(
            start + timedelta(days=2),
            "ps-alice",
            client=str(POWER),
            consent_id=alice_second.id,
            basis=None,
            node=f"{PRIVATE_NODE}/power-billing",
        )
    )
    for each in (log, private, consent_log):
        each.sign_checkpoint(now - timedelta(minutes=2))
    # A second checkpoint after more entries, so the history has a consistency check.
    log.append(exchange_event(start + timedelta(days=2, hours=1), "ps-alice"))
    log.sign_checkpoint(now - timedelta(minutes=1))
    issuer = DevIssuer.load_or_create(tmp_path, issuer="onceonly-dev", audience="onceonly")
    logs = {NODE: log, PRIVATE_NODE: private}
    settings = Settings(portal_secret=SecretStr(SECRET), data_dir=tmp_path)
    app = build_portal(
        settings,
        consent=LocalConsent(service),
        logs=local_logs(logs, subjects_of),
        issuer=issuer,
        verifier=issuer.verifier(),
        demo_citizens=DEMO_CITIZENS,
        consent_log=LocalLog(consent_log, lambda p: {p.subject}),
        **portal,
    )
    root = Starlette(routes=[Mount("/portal", app=app)])
    return World(
        root,
        app,
        service,
        logs,
        consent_log,
        issuer,
        alice_consent,
        alice_second,
        bob_consent,
        alice_request,
        now,
    )
