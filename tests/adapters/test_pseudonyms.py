"""Per-agency pseudonyms (機関別符号) over the adapters store, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from adapters.pseudonyms import PseudonymService
from exchange.db import make_engine, upgrade
from exchange.errors import ConflictError, NotFoundError

RR = "JP/GOV/132098/resident-registry"
TAX = "JP/GOV/132098/municipal-tax"
GAS = "JP/COM/9000000000002/gas"
MASTER = "123456789012"


@pytest.fixture
def service(db_url: str) -> Iterator[PseudonymService]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield PseudonymService(engine, [RR, TAX, GAS])
    engine.dispose()


def test_enrolment_gives_a_distinct_pseudonym_per_agency(service: PseudonymService) -> None:
    ids = service.enrol(MASTER)
    assert set(ids) == {RR, TAX, GAS}
    assert len(set(ids.values())) == 3
    assert MASTER not in "".join(ids.values())


def test_enrolment_is_idempotent(service: PseudonymService) -> None:
    assert service.enrol(MASTER) == service.enrol(MASTER)


def test_pseudonyms_are_random_not_derived_from_the_master_key(
    make_db_url: Callable[[], str],
) -> None:
    issued = []
    for _ in range(2):
        engine = make_engine(make_db_url())
        upgrade(engine)
        issued.append(PseudonymService(engine, [RR]).enrol(MASTER)[RR])
        engine.dispose()
    # Two independent stores enrolling the same master key come up with different pseudonyms.
    assert issued[0] != issued[1]


def test_translate_maps_one_agencys_pseudonym_to_anothers(service: PseudonymService) -> None:
    ids = service.enrol(MASTER)
    service.enrol("999999999999")
    assert service.translate(ids[RR], RR, TAX) == ids[TAX]
    assert service.translate(ids[TAX], TAX, GAS) == ids[GAS]
    assert service.pseudonym_for(MASTER, GAS) == ids[GAS]
    # As the node calls it through exchange.ports.SubjectTranslator:
    assert service.translate(ids[GAS], from_agency=GAS, to_agency=RR) == ids[RR]


def test_unknown_pseudonym_is_not_found(service: PseudonymService) -> None:
    ids = service.enrol(MASTER)
    with pytest.raises(NotFoundError):
        service.translate("NOPE", RR, TAX)
    # A real pseudonym presented as another agency's is unknown there too.
    with pytest.raises(NotFoundError):
        service.translate(ids[RR], TAX, GAS)
    with pytest.raises(NotFoundError):
        service.translate(ids[RR], RR, "JP/GOV/132098/unknown-agency")
    with pytest.raises(NotFoundError):
        service.pseudonym_for("000000000000", RR)


def test_not_found_errors_do_not_echo_the_master_key(service: PseudonymService) -> None:
    with pytest.raises(NotFoundError) as info:
        service.pseudonym_for(MASTER, RR)
    assert MASTER not in str(info.value)


def test_bulk_enrolment_matches_single_lookups_and_refuses_repeats(
    service: PseudonymService,
) -> None:
    keys = [f"{n:012d}" for n in range(50)]
    issued = service.enrol_many(keys)
    assert service.pseudonym_for(keys[7], TAX) == issued[7][TAX]
    assert service.translate(issued[49][RR], RR, GAS) == issued[49][GAS]
    with pytest.raises(ConflictError):
        service.enrol_many(keys[:1])
