"""A node's metrics count what was decided, not the HTTP status (issue 14.8): a provider's
refusal is a signed HTTP 200 on the wire, and must still count as a refusal with its code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.exchange._federation import (
    ADDRESS,
    GAS,
    RESIDENTS,
    TAX,
    Federation,
    build_federation,
    node_client,
)

ACCESS_DENIED = "Server.ServerProxy.AccessDenied"


@pytest.fixture
def fed(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    federation = build_federation(tmp_path, db_url)
    yield federation
    federation.central_engine.dispose()


def _call(fed: Federation, client: object) -> int:
    async def go() -> int:
        async with node_client(fed, client.member) as c:  # type: ignore[attr-defined]
            r = await c.get(
                f"/r1/{ADDRESS}",
                headers={
                    "X-Road-Client": str(client),
                    "X-OnceOnly-Api-Key": fed.api_keys[client],  # type: ignore[index]
                    "X-OnceOnly-Purpose": "tax-assessment",
                    "X-OnceOnly-Subject": "sub-1",
                },
            )
            return r.status_code

    return asyncio.run(go())


def _exchanges(fed: Federation, member: object) -> dict[tuple[str, str, str], float]:
    async def go() -> str:
        async with node_client(fed, member) as c:  # type: ignore[arg-type]
            return (await c.get("/metrics")).text

    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(asyncio.run(go())):
        if family.name != "onceonly_exchanges":
            continue
        for sample in family.samples:
            if sample.name == "onceonly_exchanges_total":
                key = (sample.labels["side"], sample.labels["decision"], sample.labels["code"])
                counts[key] = sample.value
    return counts


def test_a_provider_refusal_counts_as_deny_with_its_code_not_as_ok(fed: Federation) -> None:
    assert _call(fed, GAS) == 403  # no access right: the provider signs a refusal (HTTP 200)
    provider = _exchanges(fed, RESIDENTS.member)
    assert provider == {("provider", "deny", ACCESS_DENIED): 1.0}
    consumer = _exchanges(fed, GAS.member)
    assert consumer == {("consumer", "deny", ACCESS_DENIED): 1.0}


def test_an_allowed_exchange_counts_as_allow_without_code(fed: Federation) -> None:
    assert TAX.member == RESIDENTS.member  # one node (Machida) on both sides
    assert _call(fed, TAX) == 200
    assert _exchanges(fed, TAX.member) == {
        ("consumer", "allow", ""): 1.0,
        ("provider", "allow", ""): 1.0,
    }


def test_node_metrics_include_process_metrics(fed: Federation) -> None:
    async def go() -> str:
        async with node_client(fed, TAX.member) as c:
            return (await c.get("/metrics")).text

    names = {f.name for f in text_string_to_metric_families(asyncio.run(go()))}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    assert "onceonly_database_unavailable" in names


def test_peer_supplied_codes_are_bounded_as_label_values() -> None:
    from exchange.node.metrics import metric_code

    assert metric_code(ACCESS_DENIED) == ACCESS_DENIED
    assert metric_code(None) == ""
    assert metric_code("x" * 200) == "other"
    assert metric_code('evil"} 1\nfake_metric 9') == "other"
