"""Translator mode end to end: the central server (with the pseudonym translator) and two
members' nodes as real processes. No node's database holds another agency's codes, the consumer
never sees the provider's code, and the translator audits every translation and refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect, text

from adapters.pseudonyms import PseudonymService
from exchange.db import make_engine
from exchange.identifiers import MemberId
from exchange.settings import Settings
from onceonly.wiring import PSEUDONYMS, registry_database_url
from tests.integration.processes import Cluster, provisioned_cluster, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MACHIDA = MemberId.parse("JP/GOV/132098")
GAS = MemberId.parse("JP/COM/9000000000002")
GAS_CLIENT = "JP/COM/9000000000002/gas"
RESIDENTS = "JP/GOV/132098/resident-registry"
TAX = "JP/GOV/132098/municipal-tax"
ADDRESS = f"{RESIDENTS}/address/v1"
PERSON = f"{RESIDENTS}/person/v1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, dict[str, str], Settings]]:
    # On SQLite whatever DATABASE_URL the run has: the test inspects each component's own file.
    c, settings, api_keys = provisioned_cluster(
        tmp_path / "data",
        (MACHIDA, GAS),
        log=tmp_path / "processes.log",
        citizens=30,
        env={"ONCEONLY_PSEUDONYMS": "translator", "ONCEONLY_REGISTRY_REFRESH_S": "1"},
    )
    gen = running(c)
    cl = next(gen)
    for p in cl.procs.values():
        p.start()
    yield cl, api_keys, settings
    gen.close()


def _codes(settings: Settings) -> dict[str, str]:
    """One Machida taxpayer's codes at tax, the resident registry and gas, read as the operator of
    the translator would (the test harness may; no node can)."""
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    tax = make_engine(registry_database_url(settings, "municipal-tax"))
    try:
        with tax.connect() as conn:
            code = conn.execute(
                text("SELECT taxpayer_id FROM taxpayers ORDER BY taxpayer_id LIMIT 1")
            ).scalar_one()
        svc = PseudonymService(store, (TAX, GAS_CLIENT))  # translate reads any agency
        return {
            TAX: str(code),
            RESIDENTS: svc.translate(str(code), TAX, RESIDENTS),
            GAS_CLIENT: svc.translate(str(code), TAX, GAS_CLIENT),
        }
    finally:
        store.dispose()
        tax.dispose()


def _audit_text(path: Path) -> str:
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT data FROM audit_entries")).all()
    finally:
        engine.dispose()
    return "\n".join(str(r[0]) for r in rows)


def _get(
    url: str, client: str, key: str, subject: str, service: str, purpose: str
) -> httpx.Response:
    headers = {
        "X-Road-Client": client,
        "X-OnceOnly-Api-Key": key,
        "X-OnceOnly-Purpose": purpose,
        "X-OnceOnly-Subject": subject,
    }
    return httpx.get(f"{url}/r1/{service}", headers=headers, timeout=20)


def test_exchange_through_the_translator_leaves_no_other_agencys_codes_at_the_nodes(
    cluster: tuple[Cluster, dict[str, str], Settings],
) -> None:
    c, keys, settings = cluster
    codes = _codes(settings)
    machida, gas = c.procs[str(MACHIDA)].url, c.procs[str(GAS)].url

    for _ in range(2):  # the second call uses the cached token
        ok = _get(machida, TAX, keys[TAX], codes[TAX], ADDRESS, "taxation")
        assert ok.status_code == 200, ok.text
        assert ok.json()["address"].startswith("東京都町田市")
    # Across members: translated and opened at Machida, then refused there by policy (the gas
    # company needs the citizen's consent) — the gas node still never sees Machida's code.
    no_basis = _get(gas, GAS_CLIENT, keys[GAS_CLIENT], codes[GAS_CLIENT], ADDRESS, "address-change")
    assert no_basis.status_code == 403, no_basis.text
    # No access right: the translator refuses and audits it.
    refused = _get(gas, GAS_CLIENT, keys[GAS_CLIENT], codes[GAS_CLIENT], PERSON, "address-change")
    assert refused.status_code == 403, refused.text

    data = settings.data_dir
    node_dbs = [
        *data.glob("node-*.sqlite"),
        *(
            data / "registries" / f"{r}.sqlite"
            for r in ("gas", "resident-registry", "municipal-tax")
        ),
    ]
    for db in node_dbs:
        engine = make_engine(f"sqlite:///{db}")
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert not {t for t in tables if t.startswith("adapters_pseudonym")}, db

    gas_log = _audit_text(data / "node-JP_COM_9000000000002.sqlite")
    machida_log = _audit_text(data / "node-JP_GOV_132098.sqlite")
    assert codes[GAS_CLIENT] in gas_log  # the consumer keeps its own code
    assert codes[RESIDENTS] not in gas_log
    assert codes[TAX] not in gas_log
    assert codes[TAX] in machida_log
    assert codes[RESIDENTS] in machida_log
    assert codes[GAS_CLIENT] not in machida_log  # the provider never saw the consumer's code
    translator_log = _audit_text(data / "translator-audit.sqlite")
    assert translator_log.count('"kind":"translation"') == 2  # tax (once: cached), gas
    assert '"stage":"translation"' in translator_log  # the refusal, audited
    assert codes[RESIDENTS] not in translator_log


def test_local_mode_still_translates_through_the_shared_table_for_comparison(
    tmp_path: Path,
) -> None:
    c, settings, keys = provisioned_cluster(
        tmp_path / "data",
        (MACHIDA,),
        log=tmp_path / "processes.log",
        citizens=10,
        env={"ONCEONLY_PSEUDONYMS": "local"},
    )
    gen = running(c)
    cl = next(gen)
    try:
        for p in cl.procs.values():
            p.start()
        codes = _codes(settings)
        machida = cl.procs[str(MACHIDA)].url
        ok = _get(machida, TAX, keys[TAX], codes[TAX], ADDRESS, "taxation")
        assert ok.status_code == 200, ok.text
        assert (
            "local: this node reads the shared pseudonym table"
            in (tmp_path / "processes.log").read_text()
        )
        assert not (settings.data_dir / "translator-audit.sqlite").exists() or (
            '"kind":"translation"' not in _audit_text(settings.data_dir / "translator-audit.sqlite")
        )
    finally:
        gen.close()
