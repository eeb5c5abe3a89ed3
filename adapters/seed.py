"""Synthetic, reproducible reference data for Machida's registries (``onceonly seed``).

``seed(citizens, seed, urls)`` generates households of residents with common Japanese names
(kanji + kana), birth dates, Machida addresses (real 町名, random 番地), and from them: municipal
tax records, national health insurance enrolments, child allowance for households with children,
water/electricity/gas contracts, and land registry properties — including a few recent purchases
of a home at a *new* address, which is what the one-stop address change later moves people to.
Every citizen is enrolled with the pseudonym service once per agency (and once as
``CITIZEN_AGENCY``, the identity their portal token carries); each registry keys its rows by its
own agency's pseudonym, so no master identifier is written to any registry.

Reproducible: everything is drawn from ``random.Random(seed)`` and dated relative to ``as_of``,
so the same arguments give identical rows (same pseudonyms included). Not cryptographic: seeded
pseudonyms are for demo data only; the live service draws them from ``secrets``.
No real persons: names are random combinations of common names, addresses random lot numbers.

Trust assumption: ``urls`` point at empty department databases the caller owns; the pseudonym
store (``urls["pseudonyms"]``) must already carry the ``adapters`` Alembic branch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from adapters.reference._names import (
    BUILDINGS,
    FEMALE_GIVEN,
    KANJI_DIGITS,
    MALE_GIVEN,
    SURNAMES,
    TOWNS_BANCHI,
    TOWNS_CHOME,
)
from adapters.reference.registries import reference_registries
from adapters.reference.schema import REGISTRY_TABLES, create_registry_schema
from adapters.store import PSEUDONYM_SUBJECTS_TABLE, PSEUDONYMS_TABLE
from exchange.db import make_engine
from exchange.ports import CITIZEN_AGENCY

__all__ = ["BATCH_CITIZENS", "PSEUDONYMS", "SEED_AS_OF", "SeedReport", "seed"]

SEED_AS_OF = date(2026, 4, 1)
"""The default 'today' of generated data (fixed, so a seed always gives the same rows)."""
BATCH_CITIZENS = 5_000
PSEUDONYMS = "pseudonyms"
"""Key of ``urls`` naming the pseudonym store's database."""

PREFECTURE_CITY = "東京都町田市"
RECENT_PURCHASE_DAYS = 90
_HOUSEHOLD_SIZES = (1, 2, 3, 4, 5)
_HOUSEHOLD_WEIGHTS = (38, 28, 17, 12, 5)
_SURNAME_WEIGHTS = tuple(1.0 / (rank + 8) for rank in range(len(SURNAMES)))
_BASIC_DEDUCTION_YEN = 430_000
_MUNICIPAL_TAX_RATE = 0.10
_P_TAXPAYER = 0.85
_P_NHI_HOUSEHOLD = 0.25
_P_ELECTRICITY = 0.7
_P_GAS = 0.6
_P_OWNS_HOME = 0.35
_P_RECENT_PURCHASE = 0.04
_P_APARTMENT = 0.35


@dataclass(frozen=True, slots=True)
class SeedReport:
    """What ``seed`` wrote: rows per registry (and pseudonym store), and how long it took."""

    citizens: int
    households: int
    seed: int
    as_of: date
    rows: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass(slots=True)
class _Person:
    index: int
    name: str
    kana: str
    sex: str
    birth: date
    relationship: str
    pseudonyms: dict[str, str]


class _Generator:
    """Draws every value from one ``random.Random`` in a fixed order (reproducibility)."""

    def __init__(self, seed: int, as_of: date) -> None:
        self.rng = random.Random(seed)  # noqa: S311 (reproducible demo data, not secrets)
        self.as_of = as_of
        self.fiscal_year = as_of.year if as_of.month >= 4 else as_of.year - 1
        self.agencies = (CITIZEN_AGENCY, *(r.client_id for r in reference_registries()))
        self.by_subsystem = {r.subsystem: r.client_id for r in reference_registries()}
        self.counters = {"insured": 0, "water": 0, "electricity": 0, "gas": 0, "property": 0}
        self.seed = seed

    def pseudonym(self) -> str:
        return f"{self.rng.getrandbits(80):020X}"

    def next_number(self, kind: str) -> int:
        self.counters[kind] += 1
        return self.counters[kind]

    def address(self) -> str:
        rng = self.rng
        if rng.random() < 0.8:
            town, chome = rng.choice(TOWNS_CHOME)
            base = (
                f"{PREFECTURE_CITY}{town}{KANJI_DIGITS[rng.randint(1, chome)]}丁目"
                f"{rng.randint(1, 40)}番{rng.randint(1, 30)}号"
            )
        else:
            base = f"{PREFECTURE_CITY}{rng.choice(TOWNS_BANCHI)}{rng.randint(1, 3999)}番地"
            if rng.random() < 0.5:
                base += str(rng.randint(1, 20))
        if rng.random() < _P_APARTMENT:
            base += f"　{rng.choice(BUILDINGS)}町田{rng.randint(1, 5)}{rng.randint(1, 12):02d}号室"
        return base

    def birth(self, age: int) -> date:
        return self.as_of - timedelta(days=age * 365 + self.rng.randint(0, 364))

    def person(self, index: int, surname: tuple[str, str], sex: str, age: int, rel: str) -> _Person:
        given = self.rng.choice(MALE_GIVEN if sex == "男" else FEMALE_GIVEN)
        return _Person(
            index=index,
            name=f"{surname[0]}　{given[0]}",
            kana=f"{surname[1]}　{given[1]}",
            sex=sex,
            birth=self.birth(age),
            relationship=rel,
            pseudonyms={a: self.pseudonym() for a in self.agencies},
        )

    def household(self, first_index: int, size: int) -> list[_Person]:
        rng = self.rng
        surname = rng.choices(SURNAMES, weights=_SURNAME_WEIGHTS)[0]
        head_sex = "男" if rng.random() < 0.6 else "女"
        head_age = rng.randint(20, 90) if size == 1 else rng.randint(27, 70)
        people = [self.person(first_index, surname, head_sex, head_age, "世帯主")]
        if size >= 2 and rng.random() < 0.85:
            spouse_sex = "女" if head_sex == "男" else "男"
            spouse_age = max(20, head_age + rng.randint(-6, 6))
            people.append(
                self.person(
                    first_index + 1,
                    surname,
                    spouse_sex,
                    spouse_age,
                    "妻" if spouse_sex == "女" else "夫",
                )
            )
        while len(people) < size:
            child_age = rng.randint(0, max(0, min(25, head_age - 22)))
            sex = "男" if rng.random() < 0.5 else "女"
            people.append(self.person(first_index + len(people), surname, sex, child_age, "子"))
        return people

    def age(self, born: date) -> int:
        a = self.as_of
        return a.year - born.year - ((a.month, a.day) < (born.month, born.day))


def _child_allowance_yen(ages: list[int]) -> int:
    # 2024 rules: ¥15,000 under 3, ¥10,000 from 3 to 18, ¥30,000 from the third child on.
    total = 0
    for rank, age in enumerate(sorted(ages, reverse=True), start=1):
        if rank >= 3:
            total += 30_000
        elif age < 3:
            total += 15_000
        else:
            total += 10_000
    return total


def _generate(
    gen: _Generator, start: int, count: int
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Rows of every table for citizens ``start .. start+count`` (households never split)."""
    rng = gen.rng
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in REGISTRY_TABLES}
    rows[PSEUDONYMS] = []
    rows["pseudonym_subjects"] = []
    households = 0
    index = start
    end = start + count
    a = gen.by_subsystem
    while index < end:
        size = min(rng.choices(_HOUSEHOLD_SIZES, weights=_HOUSEHOLD_WEIGHTS)[0], end - index)
        people = gen.household(index, size)
        index += size
        households += 1
        head = people[0]
        address = gen.address()
        household_id = f"{rng.getrandbits(64):016X}"
        moved_in = gen.as_of - timedelta(days=rng.randint(30, 365 * 30))
        nhi = rng.random() < _P_NHI_HOUSEHOLD
        for p in people:
            rows["pseudonym_subjects"].append(
                {
                    "id": f"{rng.getrandbits(128):032x}",
                    "citizen_key": f"SYN-{gen.seed}-{p.index:09d}",
                    "created_at": datetime(
                        gen.as_of.year, gen.as_of.month, gen.as_of.day, tzinfo=UTC
                    ),
                }
            )
            sid = rows["pseudonym_subjects"][-1]["id"]
            rows[PSEUDONYMS].extend(
                {"subject_id": sid, "agency": ag, "pseudonym": ps}
                for ag, ps in p.pseudonyms.items()
            )
            born_here = max(moved_in, p.birth)
            rows["resident-registry"].append(
                {
                    "resident_id": p.pseudonyms[a["resident-registry"]],
                    "name": p.name,
                    "name_kana": p.kana,
                    "birth_date": p.birth,
                    "sex": p.sex,
                    "address": address,
                    "household_id": household_id,
                    "relationship": p.relationship,
                    "moved_in_on": born_here,
                }
            )
            age = gen.age(p.birth)
            income = 0
            if age >= 18 and rng.random() < _P_TAXPAYER:
                income = int(rng.lognormvariate(15.0, 0.6)) // 1000 * 1000
                tax = (
                    max(0, int((income - _BASIC_DEDUCTION_YEN) * _MUNICIPAL_TAX_RATE)) // 100 * 100
                )
                rows["municipal-tax"].append(
                    {
                        "taxpayer_id": p.pseudonyms[a["municipal-tax"]],
                        "name": p.name,
                        "address": address,
                        "fiscal_year": gen.fiscal_year,
                        "taxable_income_yen": income,
                        "municipal_tax_yen": tax,
                        "address_notified_on": None,
                    }
                )
            if nhi:
                rows["national-health-insurance"].append(
                    {
                        "insured_id": p.pseudonyms[a["national-health-insurance"]],
                        "insured_number": f"{gen.next_number('insured'):08d}",
                        "name": p.name,
                        "address": address,
                        "household_head": p is head,
                        "enrolled_on": born_here,
                        "annual_premium_yen": 20_000 + income // 10 // 100 * 100,
                        "address_notified_on": None,
                    }
                )
        child_ages = [gen.age(p.birth) for p in people if p.relationship == "子"]
        child_ages = [x for x in child_ages if x < 18]
        if child_ages:
            rows["child-allowance"].append(
                {
                    "recipient_id": head.pseudonyms[a["child-allowance"]],
                    "name": head.name,
                    "address": address,
                    "children": len(child_ages),
                    "monthly_amount_yen": _child_allowance_yen(child_ages),
                    "certified_on": max(
                        moved_in, gen.as_of - timedelta(days=365 * max(child_ages))
                    ),
                    "address_notified_on": None,
                }
            )
        for subsystem, plans, p_has in (
            ("water", ("一般用 口径20mm", "一般用 口径13mm", "一般用 口径25mm"), 1.0),
            (
                "electricity",
                ("従量電灯B 30A", "従量電灯B 40A", "従量電灯C", "オール電化"),
                _P_ELECTRICITY,
            ),
            ("gas", ("一般契約", "床暖房割", "給湯暖房割"), _P_GAS),
        ):
            if rng.random() < p_has:
                prefix = {"water": "W", "electricity": "E", "gas": "G"}[subsystem]
                rows[subsystem].append(
                    {
                        "customer_id": head.pseudonyms[a[subsystem]],
                        "contract_number": f"{prefix}{gen.next_number(subsystem):010d}",
                        "name": head.name,
                        "supply_address": address,
                        "plan": rng.choice(plans),
                        "started_on": moved_in,
                        "supply_change_on": None,
                    }
                )
        owner = head.pseudonyms[a["land-registry"]]
        if rng.random() < _P_OWNS_HOME:
            cause = "売買" if rng.random() < 0.8 else "相続"
            for kind, area in (("土地", rng.randint(80, 250)), ("建物", rng.randint(60, 140))):
                rows["land-registry"].append(
                    _property(gen, owner, kind, address, area, cause, moved_in)
                )
        if rng.random() < _P_RECENT_PURCHASE:
            # A home bought recently at a new address: the address change moves them there.
            bought = gen.as_of - timedelta(days=rng.randint(1, RECENT_PURCHASE_DAYS))
            rows["land-registry"].append(
                _property(gen, owner, "建物", gen.address(), rng.randint(50, 120), "売買", bought)
            )
    return rows, households


def _property(
    gen: _Generator, owner: str, kind: str, location: str, area: int, cause: str, on: date
) -> dict[str, Any]:
    return {
        "property_number": f"{1320980000000 + gen.next_number('property'):013d}",
        "owner_id": owner,
        "kind": kind,
        "location": location,
        "area_m2": area,
        "cause": cause,
        "transfer_date": on,
    }


def _batches(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(size, total - start)


def seed(
    citizens: int,
    seed: int,
    urls: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
    *,
    as_of: date = SEED_AS_OF,
    batch: int = BATCH_CITIZENS,
) -> SeedReport:
    """Generate ``citizens`` synthetic residents into the registries named in ``urls``.

    ``urls`` maps a reference subsystem (``resident-registry``, ``municipal-tax``, …) or
    ``"pseudonyms"`` to a database URL; registries not named are generated (to keep the data
    identical) but not written. Tables are created if missing. ``progress`` is called with the
    number of citizens written after each batch (e.g. ``rich`` ``Progress.advance``).
    """
    if citizens < 0 or batch < 1:
        raise ValueError("citizens must be >= 0 and batch >= 1")
    unknown = set(urls) - set(REGISTRY_TABLES) - {PSEUDONYMS}
    if unknown:
        raise ValueError(f"unknown registries in urls: {sorted(unknown)}")
    started = time.perf_counter()
    engines: dict[str, Engine] = {}
    for url in set(urls.values()):
        engines[url] = make_engine(url)
    try:
        for subsystem in REGISTRY_TABLES:
            if subsystem in urls:
                create_registry_schema(engines[urls[subsystem]], subsystem)
        gen = _Generator(seed, as_of)
        counts: dict[str, int] = {k: 0 for k in urls}
        households = 0
        for start, count in _batches(citizens, batch):
            rows, n_households = _generate(gen, start, count)
            households += n_households
            for key, url in urls.items():
                with engines[url].begin() as conn:
                    if key == PSEUDONYMS:
                        conn.execute(insert(PSEUDONYM_SUBJECTS_TABLE), rows["pseudonym_subjects"])
                        conn.execute(insert(PSEUDONYMS_TABLE), rows[PSEUDONYMS])
                        counts[key] += len(rows["pseudonym_subjects"]) + len(rows[PSEUDONYMS])
                    elif rows[key]:
                        conn.execute(insert(REGISTRY_TABLES[key]), rows[key])
                        counts[key] += len(rows[key])
            if progress is not None:
                progress(count)
    finally:
        for engine in engines.values():
            engine.dispose()
    return SeedReport(
        citizens=citizens,
        households=households,
        seed=seed,
        as_of=as_of,
        rows=counts,
        seconds=time.perf_counter() - started,
    )
