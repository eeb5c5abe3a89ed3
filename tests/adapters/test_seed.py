"""Synthetic reference data: reproducible, realistic, and served by the reference adapters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date

import pytest
from sqlalchemy import select

from adapters.pseudonyms import PseudonymService
from adapters.reference import REGISTRY_TABLES, reference_registries, registry
from adapters.seed import PSEUDONYMS, seed
from adapters.store import PSEUDONYMS_TABLE
from exchange.db import make_engine, upgrade
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import CITIZEN_AGENCY, AdapterRequest

CITIZENS = 300
AS_OF = date(2026, 4, 1)


def _urls(url: str) -> dict[str, str]:
    return {**dict.fromkeys(REGISTRY_TABLES, url), PSEUDONYMS: url}


def _seeded(make_db_url: Callable[[], str], seed_value: int) -> str:
    url = make_db_url()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    seed(CITIZENS, seed_value, _urls(url), batch=128)
    return url


def _dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = make_engine(url)
    out: dict[str, list[tuple[object, ...]]] = {}
    with engine.connect() as conn:
        for name, table in REGISTRY_TABLES.items():
            pk = list(table.primary_key.columns)
            out[name] = [tuple(r) for r in conn.execute(select(table).order_by(*pk))]
        out[PSEUDONYMS] = [
            tuple(r)
            for r in conn.execute(
                select(PSEUDONYMS_TABLE).order_by(
                    PSEUDONYMS_TABLE.c.subject_id, PSEUDONYMS_TABLE.c.agency
                )
            )
        ]
    engine.dispose()
    return out


def test_same_seed_gives_identical_data_and_another_seed_differs(
    make_db_url: Callable[[], str],
) -> None:
    a, b, c = (_dump(_seeded(make_db_url, s)) for s in (7, 7, 8))
    assert a == b
    assert a["resident-registry"] != c["resident-registry"]
    assert len(a["resident-registry"]) == CITIZENS
    assert len(a[PSEUDONYMS]) == CITIZENS * (len(reference_registries()) + 1)  # + CITIZEN_AGENCY


def test_seed_reports_rows_and_progress(make_db_url: Callable[[], str]) -> None:
    url = make_db_url()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    advanced: list[int] = []
    report = seed(CITIZENS, 1, _urls(url), advanced.append, batch=100)
    assert advanced == [100, 100, 100]
    assert report.rows["resident-registry"] == CITIZENS
    assert 0 < report.households <= CITIZENS
    assert report.rows["water"] == report.households  # one water contract per household
    assert 0 < report.rows["municipal-tax"] < CITIZENS
    assert report.total_rows > CITIZENS * len(reference_registries())


def test_seeded_residents_look_like_machida_residents(make_db_url: Callable[[], str]) -> None:
    url = _seeded(make_db_url, 3)
    rows = _dump(url)["resident-registry"]
    table = REGISTRY_TABLES["resident-registry"]
    cols = [c.name for c in table.columns]
    for row in rows[:50]:
        r = dict(zip(cols, row, strict=True))
        assert str(r["address"]).startswith("東京都町田市")
        assert "　" in str(r["name"])
        kana = str(r["name_kana"]).replace("　", "")
        assert all("\u30a0" <= ch <= "\u30ff" for ch in kana)
        assert isinstance(r["birth_date"], date)
        assert r["birth_date"] <= AS_OF


def test_some_owners_bought_a_home_recently_at_a_new_address(
    make_db_url: Callable[[], str],
) -> None:
    url = make_db_url()
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    seed(2_000, 5, _urls(url))
    dump = _dump(url)
    recent = [p for p in dump["land-registry"] if (AS_OF - p[6]).days <= 90 and p[5] == "売買"]  # type: ignore[operator]
    assert recent
    addresses = {r[5] for r in dump["resident-registry"]}
    assert any(p[3] not in addresses for p in recent)


def test_seeded_registries_are_served_by_their_adapters_under_pseudonyms(
    make_db_url: Callable[[], str],
) -> None:
    url = _seeded(make_db_url, 11)
    engine = make_engine(url)
    rr, tax = registry("resident-registry"), registry("municipal-tax")
    pseudonyms = PseudonymService(
        engine, [CITIZEN_AGENCY, *(r.client_id for r in reference_registries())]
    )
    with engine.connect() as conn:
        tax_ids = [
            r[0] for r in conn.execute(select(REGISTRY_TABLES["municipal-tax"].c.taxpayer_id))
        ]
    taxpayer = tax_ids[0]
    resident = pseudonyms.translate(taxpayer, tax.client_id, rr.client_id)
    assert resident != taxpayer
    # The citizen's own platform identity (their portal token's subject) maps there too.
    me = pseudonyms.translate(taxpayer, tax.client_id, CITIZEN_AGENCY)
    assert pseudonyms.translate(me, CITIZEN_AGENCY, rr.client_id) == resident

    def ask(reg_id: str, code: str, subject: str, fields: tuple[str, ...]) -> object:
        adapter = registry(reg_id.rsplit("/", 1)[1]).adapter(engine)
        return asyncio.run(
            adapter.call(
                AdapterRequest(
                    service=ServiceId.parse(f"{reg_id}/{code}/v1"),
                    client=ClientId.parse("JP/GOV/132098/procedures"),
                    method="GET",
                    path="",
                    query="",
                    subject=subject,
                    purpose="address-change",
                    message_id="m",
                    fields=frozenset(fields),
                )
            )
        ).data

    person = ask(rr.client_id, "address", resident, ("address",))
    taxed = ask(tax.client_id, "taxpayer", taxpayer, ("address",))
    assert person == taxed  # the same citizen, known by two unrelated identifiers
    engine.dispose()


def test_unknown_registry_in_urls_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown registries"):
        seed(1, 1, {"tax-office": "sqlite://"})
