"""Every package's SQLAlchemy models agree with what its Alembic migrations create (no drift),
on SQLite and, when DATABASE_URL is set, on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect

from adapters.store import AdaptersBase
from alerts.store import AlertBase
from audit.store import AuditBase
from consent.store import ConsentBase
from exchange.db import make_engine, upgrade
from exchange.store import Base
from onceonly.wiring import COMPONENT_BRANCHES
from procedures.store import ProceduresBase

PACKAGES = {
    "exchange": Base.metadata,
    "audit": AuditBase.metadata,
    "consent": ConsentBase.metadata,
    "procedures": ProceduresBase.metadata,
    "adapters": AdaptersBase.metadata,
    "alerts": AlertBase.metadata,
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


@pytest.mark.parametrize("component", sorted(COMPONENT_BRANCHES))
def test_each_component_database_holds_only_its_own_tables(component: str, db_url: str) -> None:
    """A node's database has no consent or procedure tables; the consent service's none of the
    exchange's; each component migrates its own packages' branches and nothing else."""
    engine = make_engine(db_url)
    upgrade(engine, COMPONENT_BRANCHES[component])
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
    engine.dispose()
    expected = set().union(*(PACKAGES[b].tables for b in COMPONENT_BRANCHES[component]))
    assert tables == expected
