"""Statutory parent mandates derived from a household answer (consent/statutory.py): the 18th
birthday (民法 第4条) ends them, a child who is 18 gets none, deriving twice registers nothing new,
and the derived mandate lets the parent act for the child. Real database (SQLite, or PostgreSQL
with DATABASE_URL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from consent.lifecycle import ConsentService
from consent.mandates import MandateService
from consent.statutory import (
    JST,
    Child,
    HouseholdAnswer,
    derive_parent_mandates,
    majority_begins,
)
from exchange.errors import RefusalError

PARENT = "citizen-parent"
NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)  # 12:00 JST on 2 December 2026


@pytest.fixture
def mandates(service: ConsentService) -> MandateService:
    return service.mandates()


@pytest.mark.parametrize(
    ("born", "of_age"),
    [
        (date(2015, 4, 1), datetime(2033, 4, 1, tzinfo=JST)),
        (date(2008, 2, 29), datetime(2026, 3, 1, tzinfo=JST)),  # no 29 Feb in 2026
        (date(2008, 3, 1), datetime(2026, 3, 1, tzinfo=JST)),  # its eve, 29 Feb 2008
        (date(2012, 2, 29), datetime(2030, 3, 1, tzinfo=JST)),
        (date(2006, 12, 31), datetime(2024, 12, 31, tzinfo=JST)),
    ],
)
def test_a_person_comes_of_age_at_midnight_tokyo_of_their_18th_birthday(
    born: date, of_age: datetime
) -> None:
    assert majority_begins(born) == of_age


def answer(*children: tuple[str, date]) -> HouseholdAnswer:
    return HouseholdAnswer(
        household_id="H-0001",
        message_id="msg-1",
        children=tuple(Child(subject, born) for subject, born in children),
    )


def test_minors_get_a_parent_mandate_until_their_18th_birthday_and_adults_none(
    mandates: MandateService,
) -> None:
    household = answer(
        ("citizen-young", date(2015, 4, 1)),
        ("citizen-18-tomorrow", date(2008, 12, 3)),  # comes of age at 00:00 JST on 3 Dec 2026
        ("citizen-18-today", date(2008, 12, 2)),  # of age since 00:00 JST today
        ("citizen-19", date(2007, 6, 1)),
    )
    done = derive_parent_mandates(mandates, PARENT, household, now=NOW, by="op")
    got = {m.represented: m for m in done.registered}
    assert set(got) == {"citizen-young", "citizen-18-tomorrow"}
    assert done.adults == ["citizen-18-today", "citizen-19"]
    young = got["citizen-young"]
    assert young.kind.value == "parent"
    assert young.status.value == "active"
    assert young.valid_until == datetime(2033, 4, 1, tzinfo=JST)
    assert young.basis == "resident registry household H-0001, born 2015-04-01, exchange msg-1"
    assert young.granted_by == "operator:op"
    assert mandates.verify_artefact(young.artefact)["exp"] == int(young.valid_until.timestamp())
    # The mandate ends at the birthday: a minute before, the parent may act; at it, not.
    tomorrow = got["citizen-18-tomorrow"]
    eve = datetime(2026, 12, 2, 23, 59, tzinfo=JST)
    assert mandates.authorise(PARENT, tomorrow.id, now=eve, procedure="address-change", action="a")
    with pytest.raises(RefusalError, match="expired"):
        mandates.authorise(
            PARENT,
            tomorrow.id,
            now=eve + timedelta(minutes=1),
            procedure="address-change",
            action="a",
        )


def test_deriving_twice_registers_nothing_new_and_a_revocation_stands(
    mandates: MandateService,
) -> None:
    household = answer(("citizen-a", date(2016, 1, 1)), ("citizen-b", date(2019, 7, 7)))
    first = derive_parent_mandates(mandates, PARENT, household, now=NOW, by="op")
    assert len(first.registered) == 2
    again = derive_parent_mandates(mandates, PARENT, household, now=NOW, by="op")
    assert again.registered == []
    assert {m.id for m in again.kept} == {m.id for m in first.registered}
    revoked = mandates.revoke(first.registered[0].id, by="op", now=NOW, operator=True)
    third = derive_parent_mandates(mandates, PARENT, household, now=NOW, by="op")
    assert third.registered == []
    assert revoked.id in {m.id for m in third.kept}
    assert len(mandates.list_for(PARENT, now=NOW)) == 2
    # Another parent of the same household is derived independently.
    other = derive_parent_mandates(mandates, "citizen-other-parent", household, now=NOW, by="op")
    assert len(other.registered) == 2


def test_a_child_is_never_their_own_parent(mandates: MandateService) -> None:
    from exchange.errors import ConflictError

    with pytest.raises(ConflictError):
        derive_parent_mandates(
            mandates, PARENT, answer((PARENT, date(2015, 1, 1))), now=NOW, by="op"
        )
