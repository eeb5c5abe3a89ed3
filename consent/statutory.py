"""Statutory parent mandates derived from the resident registry's household data (docs/consent.md).

A parent of a minor represents the child by law (民法 第818条, 第824条) until the child comes of
age; 民法 第4条 sets that age at 18 and 年齢計算ニ関スル法律 counts it from the day of birth, so a
person is 18 at the end of the day before their 18th birthday: the mandate is valid until 00:00
(Asia/Tokyo) of that birthday (a child born on 29 February comes of age at 00:00 on 1 March of a
common year).

``derive_parent_mandates`` turns one household answer of the registry — the household, the
message id of the exchange that carried it, and each child's subject and birth date — into one
``parent`` mandate per minor, ``valid_until`` the 18th birthday and ``basis`` naming the household
and the message id. It is idempotent: a child for whom this parent already holds a parent mandate
that is in force, not yet valid or revoked gets none (an operator's revocation stands until an
operator registers one by hand), and a child who is already 18 gets none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from consent.mandates import (
    Mandate,
    MandateKind,
    MandateRegistration,
    MandateService,
    MandateStatus,
)

__all__ = [
    "AGE_OF_MAJORITY",
    "Child",
    "Derivation",
    "HouseholdAnswer",
    "derive_parent_mandates",
    "majority_begins",
]

AGE_OF_MAJORITY = 18
"""民法 第4条（成年）: 年齢十八歳をもって、成年とする。"""
JST = ZoneInfo("Asia/Tokyo")


def majority_begins(birth_date: date) -> datetime:
    """When someone born on ``birth_date`` comes of age: 00:00 JST of their 18th birthday, which
    is the end of its eve (年齢計算ニ関スル法律; 民法 第143条 for a 29 February birthday)."""
    eve = birth_date - timedelta(days=1)
    try:
        last = eve.replace(year=eve.year + AGE_OF_MAJORITY)
    except ValueError:  # the eve is 29 February and that year has none: the month's last day
        last = eve.replace(year=eve.year + AGE_OF_MAJORITY, day=28)
    return datetime.combine(last + timedelta(days=1), time(), JST)


@dataclass(frozen=True, slots=True)
class Child:
    subject: str
    """The child's subject at the consent service (the citizen id)."""
    birth_date: date
    message_id: str = ""
    """The exchange that carried this child's record (else the answer's)."""


@dataclass(frozen=True, slots=True)
class HouseholdAnswer:
    """What the registry answered about the parent's household, and the exchange that carried it."""

    household_id: str
    message_id: str
    """The exchange that carried the parent's record."""
    children: tuple[Child, ...]


@dataclass(slots=True)
class Derivation:
    registered: list[Mandate] = field(default_factory=list)
    kept: list[Mandate] = field(default_factory=list)
    """Children for whom a parent mandate already stands (in force, not yet valid, revoked)."""
    adults: list[str] = field(default_factory=list)
    """Children who are 18 already: no mandate."""


_STANDING = {MandateStatus.ACTIVE, MandateStatus.NOT_YET_VALID, MandateStatus.REVOKED}


def derive_parent_mandates(
    mandates: MandateService,
    parent: str,
    answer: HouseholdAnswer,
    *,
    now: datetime,
    by: str,
    purposes: tuple[str, ...] = ("*",),
    procedures: tuple[str, ...] = ("*",),
) -> Derivation:
    """Register ``parent`` as the statutory representative of each minor child of ``answer``."""
    done = Derivation()
    held = [
        m
        for m in mandates.list_for(parent, now=now)
        if m.representative == parent and m.kind is MandateKind.PARENT and m.status in _STANDING
    ]
    for child in answer.children:
        until = majority_begins(child.birth_date)
        if until <= now:
            done.adults.append(child.subject)
            continue
        standing = [m for m in held if m.represented == child.subject]
        if standing:
            done.kept.append(standing[0])
            continue
        registration = MandateRegistration(
            representative=parent,
            represented=child.subject,
            kind=MandateKind.PARENT,
            purposes=purposes,
            procedures=procedures,
            valid_until=until,
            basis=(
                f"resident registry household {answer.household_id}, born "
                f"{child.birth_date.isoformat()}, exchange {child.message_id or answer.message_id}"
            )[:300],
        )
        done.registered.append(mandates.register(registration, by=by, now=now))
    return done
