"""Usage terms between real node processes (issue 17 item 4): a response carries signed usage
terms the consumer node verified; the departmental system confirms one deletion; another, left
past its delete-by date, shows as overdue for the auditor (API and metric) and for the citizen
(``/me/accesses``, next to the access)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from exchange.db import database_url, make_engine
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from onceonly.wiring import PSEUDONYMS, pseudonym_service, registry_database_url
from tests.integration.processes import Cluster
from tests.integration.test_nodes_as_processes import (  # noqa: F401 (fixture)
    ADDRESS,
    MACHIDA,
    TAX,
    _subject,
    cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _read(node_url: str, key: str, subject: str, message_id: str) -> httpx.Response:
    return httpx.get(
        f"{node_url}/r1/{ADDRESS}",
        headers={
            "X-Road-Client": TAX,
            "X-OnceOnly-Api-Key": key,
            "X-OnceOnly-Purpose": "taxation",
            "X-OnceOnly-Subject": subject,
            "X-Road-Id": message_id,
        },
        timeout=20,
    )


def _node_db(settings: Settings) -> str:
    return database_url(settings, f"node-{str(MACHIDA).replace('/', '_')}")


def test_terms_verified_deletion_confirmed_and_overdue_shown_to_auditor_and_citizen(
    cluster: tuple[Cluster, dict[str, str], Settings],  # noqa: F811
    tmp_path: Path,
) -> None:
    c, keys, settings = cluster
    node = c.procs[str(MACHIDA)]
    subject = _subject(settings)
    today = datetime.now(UTC).date()

    kept = _read(node.url, keys[TAX], subject, "terms-kept")
    assert kept.status_code == 200, kept.text
    terms = json.loads(kept.headers["x-onceonly-usage-terms"])
    assert terms["purpose"] == "taxation"
    assert terms["onward"] is False
    assert terms["delete_by"] >= (today + timedelta(days=364)).isoformat()
    deleted = _read(node.url, keys[TAX], subject, "terms-deleted")
    assert deleted.status_code == 200, deleted.text

    # The departmental system deleted one copy, with its own API key; another client cannot.
    confirm = f"{node.url}/obligations/terms-deleted/deleted"
    wrong = httpx.post(confirm, headers={"X-Road-Client": TAX, "X-OnceOnly-Api-Key": "oo_x"})
    assert wrong.status_code == 401
    ok = httpx.post(confirm, headers={"X-Road-Client": TAX, "X-OnceOnly-Api-Key": keys[TAX]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["deleted_at"] is not None

    # A year passes for both copies (the node's clock is real: the ledger's dates move instead).
    engine = make_engine(_node_db(settings))
    with engine.begin() as conn:
        moved = conn.execute(
            text("UPDATE xchg_obligations SET delete_by = :d WHERE message_id LIKE 'terms-%'"),
            {"d": today - timedelta(days=1)},
        )
        assert moved.rowcount == 2
    engine.dispose()

    issuer = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    auditor = {"authorization": f"Bearer {issuer.issue('a1', roles=('auditor',))}"}
    assert httpx.get(f"{node.url}/audit/obligations?overdue=true", timeout=20).status_code == 401
    r = httpx.get(f"{node.url}/audit/obligations?overdue=true", headers=auditor, timeout=20)
    assert r.status_code == 200, r.text
    overdue = r.json()["obligations"]
    assert [(o["message_id"], o["overdue"]) for o in overdue] == [("terms-kept", True)]
    assert subject not in r.text  # the auditor sees messages, not whom they were about
    metrics = httpx.get(f"{node.url}/metrics", timeout=20).text
    assert "onceonly_obligations_overdue 1.0" in metrics

    # The citizen: their own record at the node shows both states next to the accesses.
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        citizen = pseudonym_service(settings, store).translate(
            subject, from_agency=TAX, to_agency=CITIZEN_AGENCY
        )
    finally:
        store.dispose()
    mine = httpx.get(
        f"{node.url}/me/accesses",
        headers={"authorization": f"Bearer {issuer.issue(citizen)}"},
        params={"limit": 100},
        timeout=20,
    )
    assert mine.status_code == 200, mine.text
    accesses = mine.json()["accesses"]
    by_message = {
        a["message_id"]: a["obligation"]
        for a in accesses
        if a["kind"] == "response" and a.get("obligation")
    }
    assert by_message["terms-kept"]["state"] == "overdue"
    assert by_message["terms-deleted"]["state"] == "deleted"
    assert by_message["terms-deleted"]["at"].startswith(today.isoformat())
    assert {a["kind"] for a in accesses} >= {"obligation.overdue", "obligation.deleted"}
