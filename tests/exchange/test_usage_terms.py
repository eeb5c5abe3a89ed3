"""Usage terms travel with the data (issue 17 item 4): signed in the response envelope,
verified by the consumer node, passed to the departmental system and kept in its ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from exchange.canonical import canonical_json
from exchange.envelope import (
    ResponseEnvelope,
    UsageTerms,
    parse_unverified_response,
    request_hash,
)
from exchange.errors import VerificationError
from exchange.obligations import ObligationsLedger
from exchange.verification import verify_response
from tests.exchange._federation import ADDRESS, TAX, Federation, build_federation, node_client
from tests.exchange.test_verification import NOW, SKEW, World, _response, world

__all__ = ["world"]

TERMS = UsageTerms(purpose="tax-assessment", delete_by=date(2027, 11, 23), onward=False)


def test_a_response_without_terms_keeps_its_canonical_form() -> None:
    """Old responses (and the vectors) have no ``terms`` key: absent terms add none."""
    env = ResponseEnvelope(
        message_id="m",
        request_hash="h",
        created_at=NOW,
        provider="JP/GOV/1/p",
        status=200,
        body_hash="b",
    )
    assert "terms" not in env.model_dump(mode="json")
    with_terms = env.model_copy(update={"terms": TERMS})
    assert with_terms.model_dump(mode="json")["terms"] == {
        "purpose": "tax-assessment",
        "delete_by": "2027-11-23",
        "onward": False,
    }
    assert b'"terms":{"delete_by":"2027-11-23"' in canonical_json(
        with_terms.model_dump(mode="json")
    )


def test_signed_terms_verify(world: World) -> None:
    req = world.envelope()
    verified = verify_response(
        parse_unverified_response(_response(world, req, terms=TERMS)),
        request=req,
        sent_request_hash=request_hash(req),
        registry=world.registry(),
        now=NOW,
        max_skew_s=SKEW,
    )
    assert verified.envelope.terms == TERMS


@pytest.mark.parametrize(
    "change",
    [
        {"delete_by": "2099-01-01"},
        {"onward": True},
        {"purpose": "marketing"},
        None,  # the terms removed altogether
    ],
    ids=["later-delete-by", "onward-allowed", "other-purpose", "terms-dropped"],
)
def test_tampered_terms_are_refused(world: World, change: dict[str, object] | None) -> None:
    req = world.envelope()
    message = json.loads(_response(world, req, terms=TERMS))
    if change is None:
        del message["envelope"]["terms"]
    else:
        message["envelope"]["terms"].update(change)
    with pytest.raises(VerificationError):
        verify_response(
            parse_unverified_response(json.dumps(message).encode()),
            request=req,
            sent_request_hash=request_hash(req),
            registry=world.registry(),
            now=NOW,
            max_skew_s=SKEW,
        )


@pytest.fixture
def fed(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    federation = build_federation(tmp_path, db_url)
    yield federation
    federation.central_engine.dispose()


def _call(fed: Federation, **extra: str):  # type: ignore[no-untyped-def]
    headers = {
        "X-Road-Client": str(TAX),
        "X-OnceOnly-Api-Key": fed.api_keys[TAX],
        "X-OnceOnly-Purpose": "tax-assessment",
        "X-OnceOnly-Subject": "sub-1",
        **extra,
    }

    async def go():  # type: ignore[no-untyped-def]
        async with node_client(fed, TAX.member) as c:
            return await c.get(f"/r1/{ADDRESS}", headers=headers)

    return asyncio.run(go())


def _today(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


def test_default_terms_reach_the_departmental_system_and_the_ledger(fed: Federation) -> None:
    r = _call(fed, **{"X-Road-Id": "terms-1"})
    assert r.status_code == 200, r.text
    terms = json.loads(r.headers["x-onceonly-usage-terms"])
    assert terms["purpose"] == "tax-assessment"
    assert terms["onward"] is False
    assert terms["delete_by"] in {_today(365), _today(366)}  # the default retention
    row = ObligationsLedger(fed.central_engine).get(str(TAX), "terms-1")
    assert row is not None
    assert row.subject == "sub-1"
    assert row.service == str(ADDRESS)
    assert row.delete_by.isoformat() == terms["delete_by"]
    assert row.deleted_at is None


def test_a_statutes_retention_and_onward_term_are_signed_into_the_response(
    fed: Federation,
) -> None:
    fed.admin.add_statute(
        "tax-294",
        service=ADDRESS.unversioned,
        client=TAX,
        purposes=("tax-assessment",),
        fields=("address",),
        ordinance="jp-local-tax-act/art294",
        retention_days=30,
        onward_transfer=True,
    )
    fed.refresh()
    r = _call(fed)
    assert r.status_code == 200, r.text
    terms = json.loads(r.headers["x-onceonly-usage-terms"])
    assert terms["delete_by"] in {_today(30), _today(31)}
    assert terms["onward"] is True


def test_terms_changed_in_transit_are_refused_and_not_recorded(fed: Federation) -> None:
    def later_delete_by(raw: bytes) -> bytes:
        message = json.loads(raw)
        message["envelope"]["terms"]["delete_by"] = "2099-12-31"
        return json.dumps(message).encode()

    fed.transport.tamper = later_delete_by
    r = _call(fed, **{"X-Road-Id": "terms-tampered"})
    assert r.status_code == 502
    assert r.json()["code"] == "Server.ServerProxy.InvalidResponse"
    assert "x-onceonly-usage-terms" not in r.headers
    assert ObligationsLedger(fed.central_engine).get(str(TAX), "terms-tampered") is None


def test_a_refusal_carries_no_terms(fed: Federation) -> None:
    r = _call(fed, **{"X-OnceOnly-Purpose": "marketing"})
    assert r.status_code == 403
    assert "x-onceonly-usage-terms" not in r.headers
