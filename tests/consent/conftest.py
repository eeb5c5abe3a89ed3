"""Fixtures for the consent tests: a migrated database, a consent service, live consents."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from consent.artefact import ConsentIssuerKey
from consent.lifecycle import ConsentService
from consent.model import Consent
from consent.store import ConsentBase
from exchange.db import is_postgres, make_engine, normalise_url, upgrade
from exchange.identifiers import ClientId
from tests.consent.consent_factories import T0, ListAudit, request_input


@pytest.fixture(scope="session")
def _consent_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One migrated database for the consent tests (creating one per test costs ~1 s on PG)."""
    base = os.environ.get("DATABASE_URL")
    drop: Callable[[], None] | None = None
    if base and is_postgres(base):
        admin = create_engine(make_url(normalise_url(base)), isolation_level="AUTOCOMMIT")
        name = f"oo_t_consent_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(normalise_url(base)).set(database=name).render_as_string(False)

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('consent')}/consent.sqlite"
    eng = make_engine(url)
    upgrade(eng)
    yield eng
    eng.dispose()
    if drop is not None:
        drop()


@pytest.fixture
def engine(_consent_db: Engine) -> Engine:
    """The shared database, emptied of consent rows before each test."""
    with _consent_db.begin() as conn:
        for table in reversed(ConsentBase.metadata.sorted_tables):
            conn.execute(table.delete())
    return _consent_db


@pytest.fixture
def issuer_key() -> ConsentIssuerKey:
    return ConsentIssuerKey.generate(issuer="JP/GOV/consent-bank")


@pytest.fixture
def audit() -> ListAudit:
    return ListAudit()


@pytest.fixture
def service(engine: Engine, issuer_key: ConsentIssuerKey, audit: ListAudit) -> ConsentService:
    return ConsentService(engine, issuer_key=issuer_key, audit=audit, clock=lambda: T0)


GrantFn = Callable[..., Consent]


@pytest.fixture
def grant(service: ConsentService) -> GrantFn:
    """Ask (as the consumer named in the terms) and approve (as the subject): a live consent."""

    def make(**over: Any) -> Consent:
        terms = request_input(**over)
        req = service.create_request(ClientId.parse(terms.client), terms, now=T0)
        return service.approve_request(terms.subject, req.id, now=T0)

    return make
