"""The central server and two members' nodes as separate uvicorn processes on 127.0.0.1.

Runs on SQLite by default and on PostgreSQL when DATABASE_URL is set (every component then shares
one throw-away database, as replicas of a deployment would).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from adapters.pseudonyms import PseudonymService
from exchange.db import make_engine
from exchange.identifiers import MemberId
from exchange.settings import Settings
from onceonly.wiring import PSEUDONYMS, registry_database_url
from policies._internal.opa import unavailable_reason
from tests.integration.processes import Cluster, Proc, provisioned_cluster, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MACHIDA = MemberId.parse("JP/GOV/132098")
GAS = MemberId.parse("JP/COM/9000000000002")
TAX = "JP/GOV/132098/municipal-tax"
GAS_CLIENT = "JP/COM/9000000000002/gas"
ADDRESS = "JP/GOV/132098/resident-registry/address/v1"


@pytest.fixture
def cluster(tmp_path: Path, db_url: str) -> Iterator[tuple[Cluster, dict[str, str], Settings]]:
    c, settings, api_keys = provisioned_cluster(
        tmp_path / "data",
        (MACHIDA, GAS),
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=30,
        env={"ONCEONLY_REGISTRY_REFRESH_S": "1"},
    )
    gen = running(c)
    cl = next(gen)
    for p in cl.procs.values():
        p.start()
    yield cl, api_keys, settings
    gen.close()


def _subject(settings: Settings) -> str:
    engine = make_engine(registry_database_url(settings, "municipal-tax"))
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT taxpayer_id FROM taxpayers ORDER BY taxpayer_id LIMIT 1")
        ).scalar_one_or_none()
    engine.dispose()
    assert value is not None
    return str(value)


def _gas_code(settings: Settings) -> str:
    """The gas company's own code for the first taxpayer (read from the translator's store)."""
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        svc = PseudonymService(store, (TAX, GAS_CLIENT))  # translate reads any agency
        return svc.translate(_subject(settings), TAX, GAS_CLIENT)
    finally:
        store.dispose()


def _get(
    node: Proc, client: str, key: str, subject: str, service: str = ADDRESS, **extra: str
) -> httpx.Response:
    headers = {
        "X-Road-Client": client,
        "X-OnceOnly-Api-Key": key,
        "X-OnceOnly-Purpose": "taxation",
        "X-OnceOnly-Subject": subject,
        **extra,
    }
    return httpx.get(f"{node.url}/r1/{service}", headers=headers, timeout=20)


def test_signed_exchange_between_processes_allowed_refused_and_replayed(
    cluster: tuple[Cluster, dict[str, str], Settings],
) -> None:
    c, keys, settings = cluster
    subject = _subject(settings)
    machida, gas = c.procs[str(MACHIDA)], c.procs[str(GAS)]

    ok = _get(machida, TAX, keys[TAX], subject, **{"X-Road-Id": "it-1"})
    assert ok.status_code == 200, ok.text
    assert set(ok.json()) <= {"address", "moved_in_on", "household_id"}
    assert ok.json()["address"].startswith("東京都町田市")
    assert len(ok.headers["x-road-request-hash"]) == 88

    person = "JP/GOV/132098/resident-registry/person/v1"
    refused = _get(gas, GAS_CLIENT, keys[GAS_CLIENT], subject, person)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")

    replay = _get(machida, TAX, keys[TAX], subject, **{"X-Road-Id": "it-1"})
    assert replay.status_code == 409
    assert replay.json()["code"] == "Server.ServerProxy.Replay"


def test_provider_down_then_back(cluster: tuple[Cluster, dict[str, str], Settings]) -> None:
    c, keys, settings = cluster
    subject = _gas_code(settings)
    machida, gas = c.procs[str(MACHIDA)], c.procs[str(GAS)]
    # Gas asks Machida's registry by its own customer code (it has an access right for the address
    # service, but no statute: the answer, once Machida is back, is a signed refusal).
    headers = {
        "X-Road-Client": GAS_CLIENT,
        "X-OnceOnly-Api-Key": keys[GAS_CLIENT],
        "X-OnceOnly-Purpose": "address-change",
        "X-OnceOnly-Subject": subject,
    }
    url = f"{gas.url}/r1/JP/GOV/132098/resident-registry/address/v1"
    machida.stop()
    down = httpx.get(url, headers=headers, timeout=20)
    assert down.status_code == 502
    assert down.json()["code"] == "Server.ServerProxy.NetworkError"
    machida.start()
    back = httpx.get(url, headers=headers, timeout=20)
    assert back.status_code == 403  # the gas company needs the citizen's consent
    assert back.json()["code"] == "Server.ServerProxy.AccessDenied"


def test_central_registry_and_metrics_are_served(
    cluster: tuple[Cluster, dict[str, str], Settings],
) -> None:
    c, _, _ = cluster
    reg = httpx.get(c.procs["central"].url + "/registry", timeout=10).json()
    assert {"document", "signature"} <= set(reg)
    assert reg["document"]["serial"] >= 1
    metrics = httpx.get(c.procs[str(MACHIDA)].url + "/metrics", timeout=10)
    assert b"onceonly_exchanges_total" in metrics.content
    assert b"process_cpu_seconds_total" in metrics.content
    # The policy engine chosen at start-up (ONCEONLY_POLICY_ENGINE unset: auto), shown three ways.
    engine = "regopy" if unavailable_reason() else "opa-inprocess"
    assert (
        f'onceonly_policy_engine_info{{engine="{engine}",setting="auto"}} 1.0'
        in metrics.content.decode()
    )
    health = httpx.get(c.procs[str(MACHIDA)].url + "/healthz", timeout=10).json()
    assert health["policy_engine"] == engine
    assert f"onceonly.policies: policy engine: {engine} — " in c.procs[str(MACHIDA)].log.read_text()
    central = c.procs["central"].url
    central_metrics = httpx.get(central + "/metrics", timeout=10).text
    assert "onceonly_central_registry_served_total" in central_metrics
    assert "onceonly_consent_gate_total" in central_metrics  # the consent service beside it
    for url in (central, c.procs[str(MACHIDA)].url):
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"] == "ok"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_node_with_two_workers_serves_exchanges_from_two_processes(
    tmp_path: Path, db_url: str
) -> None:
    """``onceonly node --workers 2``: two worker processes share the socket, keys and database;
    exchanges through them succeed and replays are refused across workers."""
    c, settings, keys = provisioned_cluster(
        tmp_path / "data",
        (MACHIDA,),
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=10,
    )
    c.procs[str(MACHIDA)].args += ["--workers", "2"]
    gen = running(c)
    cl = next(gen)
    try:
        for p in cl.procs.values():
            p.start()
        machida = cl.procs[str(MACHIDA)]
        assert machida.popen is not None
        workers = [p for p in _children(machida.popen.pid) if p != machida.popen.pid]
        assert len(workers) >= 2, workers
        subject = _subject(settings)
        for i in range(20):
            r = _get(machida, TAX, keys[TAX], subject, **{"X-Road-Id": f"w-{i}"})
            assert r.status_code == 200, r.text
        replays = [
            _get(machida, TAX, keys[TAX], subject, **{"X-Road-Id": f"w-{i}"}) for i in range(4)
        ]
        assert {r.status_code for r in replays} == {409}
    finally:
        gen.close()
