"""Shared fixtures: fresh databases (SQLite file, or a throw-away PostgreSQL database)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exchange.db import is_postgres, normalise_url

PG_URL = os.environ.get("DATABASE_URL")
NO_PG_REASON = (
    "PostgreSQL tests need DATABASE_URL=postgresql://… (set by .ci/run when a server answers)"
)


def _create_pg_database(base: str) -> tuple[str, Callable[[], None]]:
    admin_url = make_url(normalise_url(base))
    name = f"oo_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture
def make_db_url(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases: PostgreSQL when DATABASE_URL is set, else SQLite."""
    drops: list[Callable[[], None]] = []

    def make() -> str:
        if PG_URL and is_postgres(PG_URL):
            url, drop = _create_pg_database(PG_URL)
            drops.append(drop)
            return url
        return f"sqlite:///{tmp_path / uuid.uuid4().hex[:8]}.sqlite"

    yield make
    for drop in drops:
        drop()


@pytest.fixture
def db_url(make_db_url: Callable[[], str]) -> str:
    return make_db_url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database; the test is skipped with a reason where there is none."""
    if not (PG_URL and is_postgres(PG_URL)):
        pytest.skip(NO_PG_REASON)
    url, drop = _create_pg_database(PG_URL)
    yield url
    drop()
