"""Machida's reference access rights, and the statutes that make exchanges without consent.

The one-stop desk (``ONE_STOP``) is a consumer-only subsystem of Machida city that runs the
moving procedures; it reads the registries concerned and notifies the public ones by statute,
the private utilities on the citizen's consent. Provisioning registers these rights in the
central registry; the policies decide on what the registry says, never on this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.reference.registries import (
    ELECTRICITY_MEMBER,
    GAS_MEMBER,
    LAND_REGISTRY_MEMBER,
    MACHIDA_MEMBER,
)
from exchange.identifiers import ClientId, MemberId

__all__ = ["MACHIDA", "ONE_STOP", "REFERENCE_RIGHTS", "Right"]

MACHIDA = MemberId.parse("JP/GOV/132098")
ONE_STOP = ClientId(MACHIDA, "one-stop")
"""Machida's one-stop service desk: a consumer-only subsystem that runs procedures."""


@dataclass(frozen=True, slots=True)
class Right:
    """An access right, and the statute that makes it an exchange without consent (if any)."""

    client: str
    service: str
    purposes: tuple[str, ...] = ()
    statute: str | None = None
    title_ja: str = ""
    title_en: str = ""
    fields: tuple[str, ...] | None = None


_MEMBER_OF = {
    "resident-registry": MACHIDA_MEMBER,
    "municipal-tax": MACHIDA_MEMBER,
    "national-health-insurance": MACHIDA_MEMBER,
    "child-allowance": MACHIDA_MEMBER,
    "water": MACHIDA_MEMBER,
    "one-stop": MACHIDA_MEMBER,
    "land-registry": LAND_REGISTRY_MEMBER,
    "electricity": ELECTRICITY_MEMBER,
    "gas": GAS_MEMBER,
}
"""Who runs each reference subsystem (as ``machida.toml`` declares; a test holds them equal).
Not read from the declaration: these rights are module data, built at import, and reading a file
is not an import-time job."""


def _client(subsystem: str) -> str:
    return f"{_MEMBER_OF[subsystem]}/{subsystem}"


def _svc(subsystem: str, code: str) -> str:
    return f"{_client(subsystem)}/{code}/v1"


REFERENCE_RIGHTS: tuple[Right, ...] = (
    # Tax division reads residence for assessment (地方税法 第294条: taxed where domiciled on 1 Jan).
    Right(
        _client("municipal-tax"),
        _svc("resident-registry", "address"),
        ("taxation",),
        "jp-local-tax-act/art294",
        "地方税法 第294条（住所の認定）",
        "Local Tax Act art. 294 (domicile)",
    ),
    Right(
        _client("municipal-tax"),
        _svc("resident-registry", "person"),
        ("taxation",),
        "jp-local-tax-act/art294",
        "地方税法 第294条",
        "Local Tax Act art. 294",
        ("name", "name_kana", "birth_date"),
    ),
    # NHI and child allowance check residence for eligibility.
    Right(
        _client("national-health-insurance"),
        _svc("resident-registry", "address"),
        ("benefit-eligibility",),
        "jp-national-health-insurance-act/art5",
        "国民健康保険法 第5条（被保険者）",
        "National Health Insurance Act art. 5",
    ),
    Right(
        _client("child-allowance"),
        _svc("resident-registry", "person"),
        ("benefit-eligibility",),
        "jp-child-allowance-act/art4",
        "児童手当法 第4条（支給要件）",
        "Child Allowance Act art. 4",
    ),
    Right(
        _client("child-allowance"),
        _svc("municipal-tax", "taxpayer"),
        ("benefit-eligibility",),
        "jp-my-number-act/art19-8",
        "番号利用法 第19条第8号（情報提供ネットワーク）",
        "My Number Act art. 19(8)",
        ("fiscal_year", "taxable_income_yen"),
    ),
    # The one-stop desk: the address change (住民基本台帳法 第23条, 第24条の2 for the moving
    # one-stop service) reads the registries concerned and notifies the public ones by statute.
    *(
        Right(
            str(ONE_STOP),
            _svc(sub, code),
            ("address-change",),
            "jp-basic-resident-registration-act/art24-2",
            "住民基本台帳法 第24条の2（転出届の特例）",
            "Basic Resident Registration Act art. 24-2",
        )
        for sub, code in (
            ("resident-registry", "person"),
            ("resident-registry", "address"),
            ("resident-registry", "address-change"),
            ("municipal-tax", "address-notification"),
            ("national-health-insurance", "enrolment"),
            ("national-health-insurance", "address-notification"),
            ("child-allowance", "recipient"),
            ("child-allowance", "address-notification"),
            ("water", "contract"),
            ("water", "supply-address-change"),
            ("land-registry", "property"),
        )
    ),
    # Private utilities: an access right, but no statute — the citizen's consent is the basis.
    *(
        Right(str(ONE_STOP), _svc(sub, code), ("address-change",))
        for sub in ("electricity", "gas")
        for code in ("contract", "supply-address-change")
    ),
    Right(_client("gas"), _svc("resident-registry", "address"), ("address-change",)),
    # Statutory representation: the one-stop reads a parent's and a child's household entry to
    # derive the parent's mandate (民法 第818条 親権, 第4条 成年; docs/consent.md). Last, so the
    # statute ids of the rights above keep their numbers.
    Right(
        str(ONE_STOP),
        _svc("resident-registry", "person"),
        ("statutory-representation",),
        "jp-civil-code/art818",
        "民法 第818条（親権者）・第4条（成年）",
        "Civil Code arts. 818 and 4 (parental authority, majority)",
        ("household_id", "birth_date", "relationship"),
    ),
    # Change subscriptions (docs/protocol.md §9): the tax, health insurance and child allowance
    # divisions are told of their residents' moves by statute; the utilities on consent only.
    Right(
        _client("municipal-tax"),
        _svc("resident-registry", "address-changed"),
        ("taxation",),
        "jp-local-tax-act/art294",
        "地方税法 第294条（住所の認定）",
        "Local Tax Act art. 294 (domicile)",
    ),
    Right(
        _client("national-health-insurance"),
        _svc("resident-registry", "address-changed"),
        ("benefit-eligibility",),
        "jp-national-health-insurance-act/art9",
        "国民健康保険法 第9条（届出等）",
        "National Health Insurance Act art. 9 (notifications)",
    ),
    Right(
        _client("child-allowance"),
        _svc("resident-registry", "address-changed"),
        ("benefit-eligibility",),
        "jp-child-allowance-act/art26",
        "児童手当法 第26条（届出）",
        "Child Allowance Act art. 26 (notifications)",
    ),
    *(
        Right(_client(sub), _svc("resident-registry", "address-changed"), ("address-change",))
        for sub in ("electricity", "gas")
    ),
)
