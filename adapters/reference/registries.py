"""The reference registries of Machida city (東京都町田市, LG code 132098) as SQL adapters.

Each registry is one subsystem of one member, with its own database (see ``schema``), its own
subject identifier (a per-agency pseudonym) and an ``SqlAdapter`` configuration. Members:

- Machida city's departments: ``JP/GOV/132098/<subsystem>``;
- the land registry: the Legal Affairs Bureau, ``JP/GOV/000001/land-registry`` (code fictional);
- private utilities (fictional companies): 町田電力 ``JP/COM/9000000000001/electricity`` and
  多摩ガス ``JP/COM/9000000000002/gas``.

``REFERENCE_REGISTRIES`` is the declarative table the central registry is seeded from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from adapters.reference.schema import REGISTRY_TABLES
from adapters.sql import ColumnField, FieldType, SqlAdapter, SqlServiceConfig, SqlUpdate

__all__ = [
    "ELECTRICITY_MEMBER",
    "GAS_MEMBER",
    "LAND_REGISTRY_MEMBER",
    "MACHIDA_LG_CODE",
    "MACHIDA_MEMBER",
    "REFERENCE_REGISTRIES",
    "ReferenceRegistry",
    "registry",
]

MACHIDA_LG_CODE = "132098"
MACHIDA_MEMBER = f"JP/GOV/{MACHIDA_LG_CODE}"
LAND_REGISTRY_MEMBER = "JP/GOV/000001"
ELECTRICITY_MEMBER = "JP/COM/9000000000001"
GAS_MEMBER = "JP/COM/9000000000002"

ADDRESS_CHANGE = "address-change"
BENEFIT_ELIGIBILITY = "benefit-eligibility"
TAXATION = "taxation"


@dataclass(frozen=True, slots=True)
class ReferenceRegistry:
    """One reference registry: who runs it, what it is called, what it serves."""

    member: str
    member_name_ja: str
    member_name_en: str
    subsystem: str
    name_ja: str
    name_en: str
    table: str
    services: tuple[SqlServiceConfig, ...]

    @property
    def client_id(self) -> str:
        """The subsystem's X-Road id, also the agency its pseudonyms belong to."""
        return f"{self.member}/{self.subsystem}"

    def adapter(
        self,
        engine: Engine | str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        db_work: str = "auto",
    ) -> SqlAdapter:
        return SqlAdapter(engine, self.services, clock=clock, db_work=db_work)


def _f(column: str, type_: FieldType = "string", description: str | None = None) -> ColumnField:
    return ColumnField(column=column, type=type_, description=description)


def _svc(
    code: str,
    description: str,
    table: str,
    key: str,
    fields: dict[str, ColumnField],
    *,
    purposes: tuple[str, ...],
    update: tuple[str, ...] | None = None,
    many: bool = False,
) -> SqlServiceConfig:
    return SqlServiceConfig(
        code=code,
        version="v1",
        description=description,
        purposes=purposes,
        table=table,
        key_column=key,
        fields=fields,
        many=many,
        update=SqlUpdate(fields=update, required=update) if update else None,
    )


def _notification(table: str, key: str, what: str) -> SqlServiceConfig:
    return _svc(
        "address-notification",
        f"Notify the {what} of a new address (住所変更届)",
        table,
        key,
        {"address": _f("address"), "address_notified_on": _f("address_notified_on", "date")},
        purposes=(ADDRESS_CHANGE,),
        update=("address", "address_notified_on"),
    )


def _contract_services(table: str, what: str) -> tuple[SqlServiceConfig, ...]:
    return (
        _svc(
            "contract",
            f"The customer's {what} contract and supply address",
            table,
            "customer_id",
            {
                "contract_number": _f("contract_number"),
                "name": _f("name"),
                "supply_address": _f("supply_address"),
                "plan": _f("plan"),
                "started_on": _f("started_on", "date"),
            },
            purposes=(ADDRESS_CHANGE,),
        ),
        _svc(
            "supply-address-change",
            f"Move the {what} supply to a new address from a given date",
            table,
            "customer_id",
            {
                "supply_address": _f("supply_address"),
                "supply_change_on": _f("supply_change_on", "date"),
            },
            purposes=(ADDRESS_CHANGE,),
            update=("supply_address", "supply_change_on"),
        ),
    )


_RESIDENT = ReferenceRegistry(
    member=MACHIDA_MEMBER,
    member_name_ja="町田市",
    member_name_en="Machida City",
    subsystem="resident-registry",
    name_ja="住民基本台帳",
    name_en="Basic Resident Registry",
    table="residents",
    services=(
        _svc(
            "person",
            "The resident's name, kana, birth date, sex and household",
            "residents",
            "resident_id",
            {
                "name": _f("name", description="氏名"),
                "name_kana": _f("name_kana", description="氏名（カナ）"),
                "birth_date": _f("birth_date", "date"),
                "sex": _f("sex"),
                "household_id": _f("household_id"),
                "relationship": _f("relationship", description="続柄"),
            },
            purposes=(ADDRESS_CHANGE, BENEFIT_ELIGIBILITY, TAXATION),
        ),
        _svc(
            "address",
            "The resident's registered address and moved-in date",
            "residents",
            "resident_id",
            {
                "address": _f("address"),
                "moved_in_on": _f("moved_in_on", "date"),
                "household_id": _f("household_id"),
            },
            purposes=(ADDRESS_CHANGE, BENEFIT_ELIGIBILITY, TAXATION),
        ),
        _svc(
            "address-change",
            "Record a move within Machida (転居届): new address and moved-in date",
            "residents",
            "resident_id",
            {"address": _f("address"), "moved_in_on": _f("moved_in_on", "date")},
            purposes=(ADDRESS_CHANGE,),
            update=("address", "moved_in_on"),
        ),
    ),
)

_TAX = ReferenceRegistry(
    member=MACHIDA_MEMBER,
    member_name_ja="町田市",
    member_name_en="Machida City",
    subsystem="municipal-tax",
    name_ja="住民税",
    name_en="Municipal Inhabitant Tax",
    table="taxpayers",
    services=(
        _svc(
            "taxpayer",
            "The taxpayer's address, taxable income and municipal tax of the fiscal year",
            "taxpayers",
            "taxpayer_id",
            {
                "name": _f("name"),
                "address": _f("address"),
                "fiscal_year": _f("fiscal_year", "integer"),
                "taxable_income_yen": _f("taxable_income_yen", "integer"),
                "municipal_tax_yen": _f("municipal_tax_yen", "integer"),
            },
            purposes=(BENEFIT_ELIGIBILITY, TAXATION),
        ),
        _notification("taxpayers", "taxpayer_id", "municipal tax division"),
    ),
)

_NHI = ReferenceRegistry(
    member=MACHIDA_MEMBER,
    member_name_ja="町田市",
    member_name_en="Machida City",
    subsystem="national-health-insurance",
    name_ja="国民健康保険",
    name_en="National Health Insurance",
    table="nhi_enrolments",
    services=(
        _svc(
            "enrolment",
            "The insured person's NHI enrolment",
            "nhi_enrolments",
            "insured_id",
            {
                "insured_number": _f("insured_number"),
                "name": _f("name"),
                "address": _f("address"),
                "household_head": _f("household_head", "boolean"),
                "enrolled_on": _f("enrolled_on", "date"),
                "annual_premium_yen": _f("annual_premium_yen", "integer"),
            },
            purposes=(ADDRESS_CHANGE, BENEFIT_ELIGIBILITY),
        ),
        _notification("nhi_enrolments", "insured_id", "national health insurance"),
    ),
)

_CHILD = ReferenceRegistry(
    member=MACHIDA_MEMBER,
    member_name_ja="町田市",
    member_name_en="Machida City",
    subsystem="child-allowance",
    name_ja="児童手当",
    name_en="Child Allowance",
    table="child_allowance_recipients",
    services=(
        _svc(
            "recipient",
            "The recipient's child allowance: children, monthly amount, certification",
            "child_allowance_recipients",
            "recipient_id",
            {
                "name": _f("name"),
                "address": _f("address"),
                "children": _f("children", "integer"),
                "monthly_amount_yen": _f("monthly_amount_yen", "integer"),
                "certified_on": _f("certified_on", "date"),
            },
            purposes=(ADDRESS_CHANGE, BENEFIT_ELIGIBILITY),
        ),
        _notification("child_allowance_recipients", "recipient_id", "child allowance section"),
    ),
)

_WATER = ReferenceRegistry(
    member=MACHIDA_MEMBER,
    member_name_ja="町田市",
    member_name_en="Machida City",
    subsystem="water",
    name_ja="水道",
    name_en="Water Bureau",
    table="water_contracts",
    services=_contract_services("water_contracts", "water"),
)

_LAND = ReferenceRegistry(
    member=LAND_REGISTRY_MEMBER,
    member_name_ja="東京法務局（架空コード）",
    member_name_en="Tokyo Legal Affairs Bureau (fictional code)",
    subsystem="land-registry",
    name_ja="不動産登記",
    name_en="Real Property Registry",
    table="land_properties",
    services=(
        _svc(
            "property",
            "Every property registered to the owner: location, kind, cause and date of transfer",
            "land_properties",
            "owner_id",
            {
                "property_number": _f("property_number", description="不動産番号"),
                "kind": _f("kind", description="土地 or 建物"),
                "location": _f("location"),
                "area_m2": _f("area_m2", "integer"),
                "cause": _f("cause", description="登記原因 (売買, 相続, …)"),
                "transfer_date": _f("transfer_date", "date"),
            },
            purposes=(ADDRESS_CHANGE, TAXATION),
            many=True,
        ),
    ),
)

_ELECTRICITY = ReferenceRegistry(
    member=ELECTRICITY_MEMBER,
    member_name_ja="町田電力株式会社（架空）",
    member_name_en="Machida Denryoku Co. (fictional)",
    subsystem="electricity",
    name_ja="電力契約",
    name_en="Electricity contracts",
    table="electricity_contracts",
    services=_contract_services("electricity_contracts", "electricity"),
)

_GAS = ReferenceRegistry(
    member=GAS_MEMBER,
    member_name_ja="多摩ガス株式会社（架空）",
    member_name_en="Tama Gas Co. (fictional)",
    subsystem="gas",
    name_ja="ガス契約",
    name_en="Gas contracts",
    table="gas_contracts",
    services=_contract_services("gas_contracts", "gas"),
)

REFERENCE_REGISTRIES: tuple[ReferenceRegistry, ...] = (
    _RESIDENT,
    _TAX,
    _NHI,
    _CHILD,
    _WATER,
    _LAND,
    _ELECTRICITY,
    _GAS,
)
assert {r.subsystem for r in REFERENCE_REGISTRIES} == set(REGISTRY_TABLES)


def registry(subsystem: str) -> ReferenceRegistry:
    """The reference registry named ``subsystem`` (``KeyError`` when there is none)."""
    for r in REFERENCE_REGISTRIES:
        if r.subsystem == subsystem:
            return r
    raise KeyError(subsystem)
