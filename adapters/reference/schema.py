"""The departments' own database schemas for the reference registries of Machida city.

These are *not* onceonly's tables: each registry is a department's (or company's) own database,
so its tables are plain SQLAlchemy Core tables created by ``create_registry_schema`` rather than by
an Alembic branch. Table names are distinct across registries so that a demo may put several
registries in one database. Every table is keyed by *that agency's* subject identifier (its
pseudonym, 機関別符号-style); no table holds a master identifier.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from adapters.store import ensure_idempotency_table

__all__ = ["REGISTRY_TABLES", "create_registry_schema"]

_ID = 32
_NAME = 64
_ADDR = 200


def _metadata() -> MetaData:
    return MetaData()


_rr = _metadata()
residents = Table(
    "residents",
    _rr,
    Column("resident_id", String(_ID), primary_key=True),
    Column("name", String(_NAME), nullable=False),
    Column("name_kana", String(_NAME), nullable=False),
    Column("birth_date", Date, nullable=False),
    Column("sex", String(8), nullable=False),
    Column("address", String(_ADDR), nullable=False),
    Column("household_id", String(_ID), nullable=False),
    Column("relationship", String(16), nullable=False),
    Column("moved_in_on", Date, nullable=False),
    Index("ix_residents_household", "household_id"),
)

_tax = _metadata()
taxpayers = Table(
    "taxpayers",
    _tax,
    Column("taxpayer_id", String(_ID), primary_key=True),
    Column("name", String(_NAME), nullable=False),
    Column("address", String(_ADDR), nullable=False),
    Column("fiscal_year", Integer, nullable=False),
    Column("taxable_income_yen", Integer, nullable=False),
    Column("municipal_tax_yen", Integer, nullable=False),
    Column("address_notified_on", Date, nullable=True),
)

_nhi = _metadata()
nhi_enrolments = Table(
    "nhi_enrolments",
    _nhi,
    Column("insured_id", String(_ID), primary_key=True),
    Column("insured_number", String(16), nullable=False, unique=True),
    Column("name", String(_NAME), nullable=False),
    Column("address", String(_ADDR), nullable=False),
    Column("household_head", Boolean, nullable=False),
    Column("enrolled_on", Date, nullable=False),
    Column("annual_premium_yen", Integer, nullable=False),
    Column("address_notified_on", Date, nullable=True),
)

_ca = _metadata()
child_allowance_recipients = Table(
    "child_allowance_recipients",
    _ca,
    Column("recipient_id", String(_ID), primary_key=True),
    Column("name", String(_NAME), nullable=False),
    Column("address", String(_ADDR), nullable=False),
    Column("children", Integer, nullable=False),
    Column("monthly_amount_yen", Integer, nullable=False),
    Column("certified_on", Date, nullable=False),
    Column("address_notified_on", Date, nullable=True),
)


def _contracts(name: str, md: MetaData) -> Table:
    return Table(
        name,
        md,
        Column("customer_id", String(_ID), primary_key=True),
        Column("contract_number", String(16), nullable=False, unique=True),
        Column("name", String(_NAME), nullable=False),
        Column("supply_address", String(_ADDR), nullable=False),
        Column("plan", String(32), nullable=False),
        Column("started_on", Date, nullable=False),
        Column("supply_change_on", Date, nullable=True),
    )


_water = _metadata()
water_contracts = _contracts("water_contracts", _water)
_elec = _metadata()
electricity_contracts = _contracts("electricity_contracts", _elec)
_gas = _metadata()
gas_contracts = _contracts("gas_contracts", _gas)

_land = _metadata()
land_properties = Table(
    "land_properties",
    _land,
    Column("property_number", String(24), primary_key=True),
    Column("owner_id", String(_ID), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("location", String(_ADDR), nullable=False),
    Column("area_m2", Integer, nullable=False),
    Column("cause", String(16), nullable=False),
    Column("transfer_date", Date, nullable=False),
    Index("ix_land_properties_owner", "owner_id"),
)

REGISTRY_TABLES: dict[str, Table] = {
    "resident-registry": residents,
    "municipal-tax": taxpayers,
    "national-health-insurance": nhi_enrolments,
    "child-allowance": child_allowance_recipients,
    "water": water_contracts,
    "land-registry": land_properties,
    "electricity": electricity_contracts,
    "gas": gas_contracts,
}
"""Subsystem name → its one table."""


def create_registry_schema(engine: Engine, subsystem: str) -> None:
    """Create one reference registry's tables (and the idempotency table) if missing."""
    try:
        tbl = REGISTRY_TABLES[subsystem]
    except KeyError:
        raise ValueError(f"unknown reference registry {subsystem!r}") from None
    tbl.metadata.create_all(engine, checkfirst=True)
    ensure_idempotency_table(engine)
