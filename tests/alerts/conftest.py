"""Factories for the alerts tests: a node's log and alerts over one real database (SQLite file,
or a throw-away PostgreSQL one with DATABASE_URL), real log keys, real Rego rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from alerts.inbox import AlertInbox
from alerts.worker import AlertWorker, citizen_key
from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from exchange.db import make_engine, upgrade
from exchange.ports import AuditEvent
from onceonly.components import COMPONENT_BRANCHES
from policies.alerts import AlertRules, AlertsEngine, opa_unavailable

NODE = "JP/GOV/132098"
ORIGIN = "onceonly.example/JP/GOV/132098/audit"
SERVICE = "JP/GOV/132098/resident-registry/address/v1"
TAX = "JP/GOV/132098/municipal-tax"
GAS = "JP/COM/5555555/tama-gas"
ALICE, BOB = "rr-alice-0001", "rr-bob-0002"
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def read(
    i: int,
    *,
    client: str = TAX,
    subject: str | None = ALICE,
    consent_id: str | None = None,
    basis: str | None = "statute:jp-local-tax-act/art294",
    kind: str = "response",
    decision: str = "allow",
    minutes: int | None = None,
) -> AuditEvent:
    """The provider's record of one exchange (``i`` makes its message and request hash)."""
    return AuditEvent(
        time=T0 + timedelta(minutes=i if minutes is None else minutes),
        node=NODE,
        kind=kind,  # type: ignore[arg-type]
        decision=decision,  # type: ignore[arg-type]
        client=client,
        service=SERVICE,
        purpose="taxation",
        subject=subject,
        consent_id=consent_id,
        message_id=f"msg-{i:06d}",
        request_hash=f"req-{i:06d}",
        basis=basis,
        status=200 if decision == "allow" else 403,
    )


@dataclass
class World:
    engine: Engine
    log: TransparencyLog
    rules: AlertRules

    def worker(self) -> AlertWorker:
        """A fresh worker, as after a restart: all it knows is in the database."""
        return AlertWorker(self.log, self.engine, self.rules, node=NODE, batch=7)

    def inbox(self) -> AlertInbox:
        return AlertInbox(self.engine, self.log.log_id)

    def key(self, subject: str) -> str:
        return citizen_key(ORIGIN, subject)


MakeWorld = Callable[..., World]


@pytest.fixture(params=["opa-inprocess", "regopy"])
def rules_engine(request: pytest.FixtureRequest) -> AlertsEngine:
    """Every alert test runs on both Rego engines (OPA's where its bindings load)."""
    engine: AlertsEngine = request.param
    reason = opa_unavailable()
    if engine == "opa-inprocess" and reason is not None:
        pytest.skip(f"OPA's evaluator is not available here: {reason}")
    return engine


@pytest.fixture
def make_world(db_url: str, rules_engine: AlertsEngine) -> Iterator[MakeWorld]:
    engines: list[Engine] = []

    def make(**rules: object) -> World:
        engine = make_engine(db_url)
        engines.append(engine)
        upgrade(engine, COMPONENT_BRANCHES["node"])
        log = TransparencyLog(engine, log_id=NODE, signer=NoteSigner.generate(ORIGIN))
        return World(engine, log, AlertRules(rules or None, engine=rules_engine))

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world(max_reads_per_window=3, window_s=3600)
