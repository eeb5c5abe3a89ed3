"""Factories for the audit tests: real databases (SQLite file or throw-away PostgreSQL), real
Ed25519 log keys, real events."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from exchange.db import make_engine, upgrade
from tests.audit.audit_factories import ORIGIN

MakeLog = Callable[..., TransparencyLog]


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def make_log(db_url: str, signer: NoteSigner) -> Iterator[MakeLog]:
    """``make_log(url=None, log_id="node-a")``: a log over a migrated database."""
    migrated: set[str] = set()
    engines: list[Engine] = []

    def make(url: str | None = None, log_id: str = "node-a") -> TransparencyLog:
        url = url or db_url
        engine = make_engine(url)
        engines.append(engine)
        if url not in migrated:
            upgrade(engine)
            migrated.add(url)
        return TransparencyLog(engine, log_id=log_id, signer=signer)

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def log(make_log: MakeLog) -> TransparencyLog:
    return make_log()
