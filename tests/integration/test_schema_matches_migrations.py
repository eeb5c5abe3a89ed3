"""Every package's SQLAlchemy models agree with what its Alembic migrations create (no drift),
on SQLite and, when DATABASE_URL is set, on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from adapters.store import AdaptersBase
from audit.store import AuditBase
from consent.store import ConsentBase
from exchange.db import make_engine, upgrade
from exchange.store import Base
from procedures.store import ProceduresBase

PACKAGES = {
    "exchange": Base.metadata,
    "audit": AuditBase.metadata,
    "consent": ConsentBase.metadata,
    "procedures": ProceduresBase.metadata,
    "adapters": AdaptersBase.metadata,
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_models_match_the_migrated_schema(package: str, db_url: str) -> None:
    metadata: MetaData = PACKAGES[package]
    engine = make_engine(db_url)
    upgrade(engine)
    ours = set(metadata.tables)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, metadata)
    engine.dispose()
    # Tables of other packages live in the same database: only differences about ours count.
    ours_diff = [d for d in diff if not (d[0] == "remove_table" and d[1].name not in ours)]
    ours_diff = [
        d
        for d in ours_diff
        if not (d[0] == "remove_index" and getattr(d[1].table, "name", None) not in ours)
    ]
    assert ours_diff == []
