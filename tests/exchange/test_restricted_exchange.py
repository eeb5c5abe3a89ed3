"""Restricted statutes in the registry and in exchanges (issue #15, item 3).

The registry document keeps its canonical form for statutes that are not restricted; a node on
each side of an exchange under a restricted statute records every entry of it restricted (no
subject in the entry, the statute and the release time instead), and an exchange on another basis
stays as it was. Real keys, a signed registry, real node apps and transparency logs; only the
HTTP hop is in memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from audit.sink import LogSink
from exchange.central_config import StatuteEntry
from exchange.db import make_engine
from exchange.errors import ClientError
from exchange.identifiers import ClientId
from policies.embedded import EmbeddedRegoEngine
from policies.feed import PolicyFeed
from tests.exchange._federation import (
    ADDRESS,
    GAS,
    RESIDENTS,
    Federation,
    build_federation,
    node_client,
)

ORDINANCE = "jp-criminal-procedure-code/art197-2"
DAYS = 30


def test_a_statute_that_is_not_restricted_keeps_its_canonical_form() -> None:
    """Documents signed before ``restricted_days`` existed still verify: None is left out."""
    plain = StatuteEntry(
        id="s",
        service=str(ADDRESS),
        client="JP/GOV/1/x",
        purposes=("p",),
        fields=("f",),
        ordinance="o",
    )
    assert "restricted_days" not in plain.model_dump(mode="json")
    restricted = plain.model_copy(update={"restricted_days": DAYS})
    assert restricted.model_dump(mode="json")["restricted_days"] == DAYS
    assert StatuteEntry.model_validate_json(restricted.model_dump_json()) == restricted


@pytest.fixture
def fed(tmp_path: Path, db_url: str) -> Iterator[tuple[Federation, dict[str, TransparencyLog]]]:
    engine = make_engine(db_url)
    logs = {
        str(m): TransparencyLog(engine, log_id=str(m), signer=NoteSigner.generate(f"t/{m}"))
        for m in (RESIDENTS.member, GAS.member)
    }
    federation = build_federation(
        tmp_path,
        db_url,
        audits={m: LogSink(logs[str(m)], engine) for m in (RESIDENTS.member, GAS.member)},
        policy=PolicyFeed(EmbeddedRegoEngine()),
    )
    federation.admin.grant(GAS, ADDRESS)
    federation.admin.add_statute(
        "covert-inquiry",
        service=ADDRESS,
        client=GAS,
        purposes=("address-change",),
        fields=("address",),
        ordinance=ORDINANCE,
        restricted_days=DAYS,
    )
    federation.refresh()
    yield federation, logs
    federation.central_engine.dispose()
    engine.dispose()


def _call(fed: Federation, client: ClientId, purpose: str) -> int:
    async def go() -> int:
        async with node_client(fed, client.member) as c:
            r = await c.get(
                f"/r1/{ADDRESS}",
                headers={
                    "X-Road-Client": str(client),
                    "X-OnceOnly-Api-Key": fed.api_keys[client],
                    "X-OnceOnly-Purpose": purpose,
                    "X-OnceOnly-Subject": "sub-1",
                },
            )
            return r.status_code

    return asyncio.run(go())


def _entries(log: TransparencyLog) -> list[dict[str, Any]]:
    return [json.loads(line)["entry"] for line in log.export()]


def test_every_entry_of_an_exchange_under_a_restricted_statute_is_restricted_at_both_nodes(
    fed: tuple[Federation, dict[str, TransparencyLog]],
) -> None:
    federation, logs = fed
    start = datetime.now(UTC)
    assert _call(federation, GAS, "address-change") == 200
    consumer, provider = _entries(logs[str(GAS.member)]), _entries(logs[str(RESIDENTS.member)])
    assert [e["kind"] for e in consumer] == ["request", "response"]
    assert [e["kind"] for e in provider] == ["response"]
    for entry in consumer + provider:
        assert "subject" not in entry
        assert "subject_commitment" in entry
        assert entry["basis"] == f"statute:{ORDINANCE}"
        until = datetime.fromisoformat(entry["restricted_until"])
        assert start + timedelta(days=DAYS) <= until <= datetime.now(UTC) + timedelta(days=DAYS)
    assert [r.entry.index for r in logs[str(GAS.member)].restricted_entries(start)[0]] == [0, 1]


def test_an_exchange_for_another_purpose_is_not_restricted(
    fed: tuple[Federation, dict[str, TransparencyLog]],
) -> None:
    federation, logs = fed
    federation.admin.add_service(
        ADDRESS,
        description="address",
        fields=("name", "address", "birth_date"),
        purposes=("tax-assessment", "address-change", "billing"),
    )
    federation.admin.add_statute(
        "billing",
        service=ADDRESS,
        client=GAS,
        purposes=("billing",),
        fields=("address",),
        ordinance="jp-gas-business-act/art1",
    )
    federation.refresh()
    assert _call(federation, GAS, "billing") == 200
    for entry in _entries(logs[str(GAS.member)]) + _entries(logs[str(RESIDENTS.member)]):
        assert entry["subject"] == "sub-1"
        assert "restricted_until" not in entry


def test_restricted_days_must_be_a_positive_number_of_days(
    fed: tuple[Federation, dict[str, TransparencyLog]],
) -> None:
    federation, _ = fed
    for days in (0, -1, 36_501):
        with pytest.raises(ClientError, match="restricted days"):
            federation.admin.add_statute(
                "bad",
                service=ADDRESS,
                client=GAS,
                purposes=("x",),
                fields=("address",),
                ordinance="o",
                restricted_days=days,
            )
