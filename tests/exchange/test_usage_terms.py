"""Usage terms travel with the data (issue 17 item 4): signed in the response envelope,
verified by the consumer node, passed to the departmental system and kept in its ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from exchange.canonical import canonical_json
from exchange.envelope import (
    ResponseEnvelope,
    UsageTerms,
    parse_unverified_response,
    request_hash,
)
from exchange.errors import VerificationError
from exchange.identifiers import ServiceId
from exchange.obligations import ObligationsLedger
from exchange.store import MessageLogRow
from exchange.verification import verify_response
from tests.exchange._federation import (
    ADDRESS,
    RESIDENTS,
    TAX,
    Federation,
    ReServingAdapter,
    build_federation,
    node_client,
)
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


def _call(fed: Federation, path: str = f"/r1/{ADDRESS}", **extra: str):  # type: ignore[no-untyped-def]
    headers = {
        "X-Road-Client": str(TAX),
        "X-OnceOnly-Api-Key": fed.api_keys[TAX],
        "X-OnceOnly-Purpose": "tax-assessment",
        "X-OnceOnly-Subject": "sub-1",
        **extra,
    }

    async def go():  # type: ignore[no-untyped-def]
        async with node_client(fed, TAX.member) as c:
            return await c.get(path, headers=headers)

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


def fed_log(fed: Federation) -> list[MessageLogRow]:
    """The consumer node's log (the federation's message log, one table for both nodes)."""
    with Session(fed.central_engine) as s:
        return list(s.scalars(select(MessageLogRow).where(MessageLogRow.node == str(TAX.member))))


def _confirm(fed: Federation, message_id: str, client: object = TAX, key: str | None = None):  # type: ignore[no-untyped-def]
    headers = {
        "X-Road-Client": str(client),
        "X-OnceOnly-Api-Key": key or fed.api_keys[client],  # type: ignore[index]
    }

    async def go():  # type: ignore[no-untyped-def]
        async with node_client(fed, TAX.member) as c:
            return await c.post(f"/obligations/{message_id}/deleted", headers=headers)

    return asyncio.run(go())


def test_the_departmental_system_confirms_deletion_once(fed: Federation) -> None:
    assert _call(fed, **{"X-Road-Id": "del-1"}).status_code == 200
    r = _confirm(fed, "del-1")
    assert r.status_code == 200, r.text
    first = r.json()["deleted_at"]
    assert first is not None
    assert r.json()["overdue"] is False
    again = _confirm(fed, "del-1")
    assert again.json()["deleted_at"] == first  # the first confirmation stands
    kinds = [e.kind for e in fed_log(fed) if e.message_id == "del-1"]
    assert kinds.count("obligation.deleted") == 1


def test_confirmations_are_authenticated_and_refusals_audited(fed: Federation) -> None:
    assert _call(fed, **{"X-Road-Id": "del-2"}).status_code == 200
    assert _confirm(fed, "del-2", key="oo_wrong").status_code == 401
    unknown = _confirm(fed, "no-such-message")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "Client.UnknownObligation"
    assert ObligationsLedger(fed.central_engine).get(str(TAX), "del-2").deleted_at is None  # type: ignore[union-attr]
    reasons = [e.reason or "" for e in fed_log(fed) if e.kind == "refusal"]
    assert any("Client.UnknownObligation" in r for r in reasons)
    assert any("Client.Unauthenticated" in r for r in reasons)


def test_ledger_overdue_is_reported_once_and_not_after_deletion(db_url: str) -> None:
    from exchange.db import make_engine, upgrade
    from exchange.node.obligations_api import sweep_overdue
    from exchange.ports import AuditEvent

    engine = make_engine(db_url)
    upgrade(engine, ("exchange",))
    ledger = ObligationsLedger(engine)
    now = datetime(2027, 1, 10, 12, tzinfo=UTC)
    for mid, due in (("a", date(2027, 1, 9)), ("b", date(2027, 1, 10)), ("c", date(2027, 1, 1))):
        terms = UsageTerms(purpose="p", delete_by=due)
        ledger.record(client="C", message_id=mid, service="S", subject="s", terms=terms, now=now)
    ledger.record(client="C", message_id="a", service="S", subject="s", terms=TERMS, now=now)
    ledger.confirm_deleted("C", "c", now)
    # Due on the 10th is due by the end of that UTC day: only "a" is overdue.
    assert [o.message_id for o in ledger.overdue(now)] == ["a"]
    assert ledger.count_overdue(now) == 1
    recorded: list[AuditEvent] = []

    async def record(event: AuditEvent) -> None:
        recorded.append(event)

    assert asyncio.run(sweep_overdue(ledger, record, "N", now)) == 1
    assert asyncio.run(sweep_overdue(ledger, record, "N", now)) == 0
    assert [(e.kind, e.subject, e.message_id) for e in recorded] == [
        ("obligation.overdue", "s", "a")
    ]
    assert ledger.count_overdue(now + timedelta(days=1)) == 2
    assert ledger.received_without_onward("s", "S")
    engine.dispose()


def test_ledger_batch_keeps_the_first_record_of_each_message(db_url: str) -> None:
    """A batch (group commit of concurrent responses) holding a message twice, and one already
    recorded, stores each message once with its first terms; the others are new rows."""
    from exchange.db import make_engine, upgrade
    from exchange.obligations import Received

    engine = make_engine(db_url)
    upgrade(engine, ("exchange",))
    ledger = ObligationsLedger(engine)
    now = datetime(2027, 1, 10, 12, tzinfo=UTC)
    early, late = UsageTerms(purpose="p", delete_by=date(2027, 1, 2)), TERMS
    ledger.record(client="C", message_id="old", service="S", subject="s", terms=early, now=now)

    async def batch() -> None:
        await asyncio.gather(
            *(
                ledger.record_async(Received("C", mid, "S", subj, terms, now))
                for mid, subj, terms in (
                    ("old", "x", late),
                    ("new", None, early),
                    ("new", "y", late),
                    ("other", "z", late),
                )
            )
        )

    asyncio.run(batch())
    got = {o.message_id: o for o in ledger.listing(now)}
    assert sorted(got) == ["new", "old", "other"]
    assert (got["old"].subject, got["old"].delete_by) == ("s", early.delete_by)
    assert (got["new"].subject, got["new"].delete_by) == (None, early.delete_by)
    assert (got["other"].subject, got["other"].onward) == ("z", late.onward)
    assert got["other"].received_at == now
    engine.dispose()


def test_data_received_under_no_onward_transfer_is_not_served_on(
    tmp_path: Path, db_url: str
) -> None:
    fed = build_federation(tmp_path, db_url)
    try:
        assert fed.adapter is not None
        adapter = fed.adapter
        adapter.__class__ = ReServingAdapter  # the same records, one more service
        digest = ServiceId(RESIDENTS, "digest", "v1")
        fed.admin.add_service(
            digest, description="digest", fields=("address",), purposes=("tax-assessment",)
        )
        fed.admin.grant(TAX, digest)
        fed.refresh()
        adapter.records["sub-2"] = {"address": "原町田2-2-2"}
        # Before anything was received about sub-1, the digest is served.
        assert _call(fed, path=f"/r1/{digest}").status_code == 200
        got = _call(fed, **{"X-Road-Id": "onward-1"})  # received under "no onward transfer"
        assert json.loads(got.headers["x-onceonly-usage-terms"])["onward"] is False
        refused = _call(fed, path=f"/r1/{digest}")
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "Server.ServerProxy.OnwardTransferRefused"
        assert refused.json()["type"].endswith("server.serverproxy.onwardtransferrefused")
        assert any(
            "OnwardTransferRefused" in (e.reason or "")
            for e in fed_log(fed)  # the residents share the tax office's node
            if e.kind == "refusal"
        )
        # Another subject's data never arrived here: served.
        other = _call(fed, path=f"/r1/{digest}", **{"X-OnceOnly-Subject": "sub-2"})
        assert other.status_code == 200
        # Once the departmental system deleted what it received, nothing is held to pass on.
        assert _confirm(fed, "onward-1").status_code == 200
        assert _call(fed, path=f"/r1/{digest}").status_code == 200
    finally:
        fed.central_engine.dispose()


def test_ledger_rows_are_stored_as_sqlalchemy_stores_them(db_url: str) -> None:
    """The batched write goes straight to the driver: its dates and times must be stored in the
    form SQLAlchemy's own INSERT gives them (on SQLite: text), so reads and ordering agree."""
    from sqlalchemy import insert, text

    from exchange.db import make_engine, upgrade
    from exchange.store import ObligationRow

    engine = make_engine(db_url)
    upgrade(engine, ("exchange",))
    now = datetime(2027, 1, 10, 12, 0, 0, 5, tzinfo=UTC)
    terms = UsageTerms(purpose="p", delete_by=date(2027, 1, 9))
    ObligationsLedger(engine).record(
        client="C", message_id="batched", service="S", subject="s", terms=terms, now=now
    )
    with engine.begin() as conn:
        conn.execute(
            insert(ObligationRow).values(
                client="C",
                message_id="orm",
                service="S",
                subject="s",
                purpose="p",
                delete_by=terms.delete_by,
                onward=False,
                received_at=now,
            )
        )
        rows = conn.execute(
            text(
                "SELECT message_id, CAST(delete_by AS TEXT), CAST(received_at AS TEXT) "
                "FROM xchg_obligations ORDER BY message_id"
            )
        ).all()
    assert rows[0][1:] == rows[1][1:]
    engine.dispose()
