"""Change subscriptions between real processes (issue 17 item 3, docs/protocol.md §9): the
central server and two members' nodes as uvicorn processes on 127.0.0.1.

* The tax division subscribes to the resident registry's ``address-changed/v1`` by statute; the
  gas company, with no statute and no consent, is refused — and, with the citizen's standing
  consent, subscribes from its own node.
* A change made straight at ``address-change/v1`` (not through the one-stop procedure) and then
  retried under its idempotency key reaches each subscriber exactly once, minimised (only the
  fields each subscription allows), naming each subscriber's own code for the person.
* Revoking the consent ends the gas company's subscription; an ended subscription gets nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from adapters.pseudonyms import PseudonymService
from exchange.db import database_url, make_engine
from exchange.identifiers import ClientId
from exchange.keystore import KeyStore
from exchange.node_requests import sign_node_request
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from exchange.store import SubscriptionRow
from onceonly.wiring import PSEUDONYMS, registry_database_url
from tests.integration.processes import Cluster, Proc
from tests.integration.test_consent_push_processes import (  # noqa: F401 (fixture)
    GAS,
    GAS_CLIENT,
    MACHIDA,
    RESIDENTS,
    TAX,
    _citizen,
    _codes,
    cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENT = f"{RESIDENTS}/address-changed/v1"
CHANGE = f"{RESIDENTS}/address-change/v1"
ONE_STOP = "JP/GOV/132098/one-stop"
DELIVERY_BOUND_S = 10.0


def _code(settings: Settings, gas_code: str, agency: str) -> str:
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        return PseudonymService(store, (GAS_CLIENT, agency)).translate(gas_code, GAS_CLIENT, agency)
    finally:
        store.dispose()


def _headers(client: str, key: str, purpose: str, subject: str, **extra: str) -> dict[str, str]:
    return {
        "X-Road-Client": client,
        "X-OnceOnly-Api-Key": key,
        "X-OnceOnly-Purpose": purpose,
        "X-OnceOnly-Subject": subject,
        **extra,
    }


def _feed(node: Proc, client: str, key: str) -> list[dict[str, Any]]:
    got = httpx.get(
        f"{node.url}/changes/v1",
        headers={"X-Road-Client": client, "X-OnceOnly-Api-Key": key},
        timeout=20,
    )
    assert got.status_code == 200, got.text
    changes: list[dict[str, Any]] = got.json()["changes"]
    return changes


def _status(settings: Settings, subscription_id: str) -> str | None:
    engine = make_engine(database_url(settings, f"node-{str(MACHIDA).replace('/', '_')}"))
    try:
        with engine.connect() as conn:
            return conn.scalar(
                select(SubscriptionRow.status).where(SubscriptionRow.id == subscription_id)
            )
    finally:
        engine.dispose()


def _pull(settings: Settings, node: Proc, client: str) -> httpx.Response:
    keys = KeyStore(settings.data_dir)
    signer = MemberSigner(load_private_key(keys.subsystem_key(ClientId.parse(client))))
    path = "/events/v1/streams"
    headers = sign_node_request(
        signer, ClientId.parse(client), "GET", path, b"", now=datetime.now(UTC)
    )
    return httpx.get(
        f"{node.url}{path}", params={"sender": RESIDENTS, "after": 0}, headers=headers, timeout=20
    )


def _wait(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s")


def _move(node: Proc, key: str, subject: str, address: str, idem: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/r1/{CHANGE}",
        json={"address": address, "moved_in_on": datetime.now(UTC).date().isoformat()},
        headers=_headers(ONE_STOP, key, "address-change", subject, **{"Idempotency-Key": idem}),
        timeout=20,
    )


def _gas_consent(
    c: Cluster, settings: Settings, key: str, gas_code: str, citizen: str
) -> dict[str, str]:
    now = datetime.now(UTC).replace(microsecond=0)
    terms = {
        "subject": gas_code,
        "subject_agency": "client",
        "client": GAS_CLIENT,
        "services": [EVENT.rsplit("/", 1)[0]],
        "purpose": {"code": "address-change", "text_ja": "転居の通知", "text_en": "moves"},
        "fields": ["address"],
        "valid_from": (now - timedelta(minutes=1)).isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        "mode": "standing",
        "data_retention_days": 30,
        "legal_text_version": "2026-11",
    }
    asked = httpx.post(
        f"{c.procs[str(GAS)].url}/platform/v1/consent-requests",
        json=terms,
        headers={"X-Road-Client": GAS_CLIENT, "X-OnceOnly-Api-Key": key},
        timeout=20,
    )
    assert asked.status_code == 201, asked.text
    approved = httpx.post(
        f"{c.procs['central'].url}/consent/v1/consent-requests/{asked.json()['id']}/approve",
        headers=_citizen(settings, citizen),
        timeout=20,
    )
    assert approved.status_code == 200, approved.text
    consent = approved.json()
    return {"X-OnceOnly-Consent-Id": consent["id"], "X-OnceOnly-Consent": consent["artefact"]}


def test_a_direct_change_reaches_each_subscriber_once_and_a_subscription_needs_a_basis(
    cluster: tuple[Cluster, dict[str, str], Settings],  # noqa: F811
) -> None:
    c, keys, settings = cluster
    machida, gas = c.procs[str(MACHIDA)], c.procs[str(GAS)]
    gas_code, citizen = _codes(settings)
    tax_code = _code(settings, gas_code, TAX)
    desk_code = citizen  # the one-stop desk knows citizens by their platform identity

    # The tax division subscribes by statute (地方税法 第294条).
    tax = _headers(TAX, keys[TAX], "taxation", tax_code)
    made = httpx.post(f"{machida.url}/r1/{EVENT}", headers=tax, timeout=20)
    assert made.status_code == 201, made.text
    sub = made.json()
    assert sub["status"] == "active"
    assert sub["basis"].startswith("statute:")
    assert sub["fields"] == ["address", "moved_in_on"]
    again = httpx.post(f"{machida.url}/r1/{EVENT}/subscriptions", headers=tax, timeout=20)
    assert again.status_code == 200
    assert again.json()["subscription_id"] == sub["subscription_id"]

    # The gas company has an access right but no statute: without a consent, refused.
    gas_h = _headers(GAS_CLIENT, keys[GAS_CLIENT], "address-change", gas_code)
    refused = httpx.post(f"{gas.url}/r1/{EVENT}", headers=gas_h, timeout=20)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "Server.ServerProxy.AccessDenied"
    # With the citizen's standing consent (address only), from its own node.
    consent = _gas_consent(c, settings, keys[GAS_CLIENT], gas_code, citizen)
    gas_sub = httpx.post(
        f"{gas.url}/r1/{EVENT}",
        headers={**gas_h, **consent, "X-OnceOnly-Fields": "address"},
        timeout=20,
    )
    assert gas_sub.status_code == 201, gas_sub.text
    assert gas_sub.json()["fields"] == ["address"]

    # A change posted straight to the registry, then retried under the same key.
    address = "東京都町田市森野二丁目2番22号"
    assert _move(machida, keys[ONE_STOP], desk_code, address, "move-1").status_code == 200
    assert _move(machida, keys[ONE_STOP], desk_code, address, "move-1").status_code == 200
    _wait(lambda: len(_feed(machida, TAX, keys[TAX])) >= 1, DELIVERY_BOUND_S)
    _wait(lambda: len(_feed(gas, GAS_CLIENT, keys[GAS_CLIENT])) >= 1, DELIVERY_BOUND_S)
    time.sleep(2)  # a second event, if one were sent, would have arrived by now
    (told_tax,) = _feed(machida, TAX, keys[TAX])
    assert told_tax["subject"] == tax_code  # the tax division's own code, never the registry's
    assert told_tax["change"] == {
        "address": address,
        "moved_in_on": told_tax["change"]["moved_in_on"],
    }
    assert told_tax["subscription_id"] == sub["subscription_id"]
    (told_gas,) = _feed(gas, GAS_CLIENT, keys[GAS_CLIENT])
    assert told_gas["subject"] == gas_code
    assert told_gas["change"] == {"address": address}  # minimised to what the consent covers

    # Catch-up: the gas company's node may pull its stream from the registry's node (a signed
    # node request, its own stream only); an unsigned pull is refused.
    pulled = _pull(settings, machida, GAS_CLIENT)
    assert pulled.status_code == 200, pulled.text
    assert pulled.json()["stream"] == f"{RESIDENTS} > {GAS_CLIENT}"
    (wire,) = pulled.json()["events"]
    assert wire["event"]["data"]["subscription_id"] == gas_sub.json()["subscription_id"]
    unsigned = httpx.get(
        f"{machida.url}/events/v1/streams", params={"sender": RESIDENTS}, timeout=20
    )
    assert unsigned.status_code == 401

    # The subscriber ends its subscription; the citizen revokes the gas company's consent.
    ended = httpx.delete(
        f"{machida.url}/r1/{EVENT}/subscriptions/{sub['subscription_id']}", headers=tax, timeout=20
    )
    assert ended.status_code == 200
    assert ended.json()["status"] == "ended"
    revoked = httpx.post(
        f"{c.procs['central'].url}/consent/v1/consents/{consent['X-OnceOnly-Consent-Id']}/revoke",
        headers=_citizen(settings, citizen),
        timeout=20,
    )
    assert revoked.status_code == 200, revoked.text
    # The revocation's push ends the subscription at the publisher (its API answers the gas
    # company nothing any more: without a basis even its status is refused).
    gas_id = gas_sub.json()["subscription_id"]
    _wait(lambda: _status(settings, gas_id) == "ended", DELIVERY_BOUND_S)
    assert _move(machida, keys[ONE_STOP], desk_code, address + "A", "move-2").status_code == 200
    time.sleep(2)
    assert len(_feed(machida, TAX, keys[TAX])) == 1
    assert len(_feed(gas, GAS_CLIENT, keys[GAS_CLIENT])) == 1


def test_a_subscriber_killed_mid_stream_loses_no_change_and_is_told_none_twice(
    cluster: tuple[Cluster, dict[str, str], Settings],  # noqa: F811
) -> None:
    """kill -9 of the subscriber's node while the registry publishes a run of changes: after its
    restart every change is in its feed exactly once, in order (the publisher retries; the
    subscriber's node pulls what it missed from the registry's node)."""
    c, keys, settings = cluster
    machida, gas = c.procs[str(MACHIDA)], c.procs[str(GAS)]
    gas_code, citizen = _codes(settings)
    consent = _gas_consent(c, settings, keys[GAS_CLIENT], gas_code, citizen)
    gas_h = _headers(GAS_CLIENT, keys[GAS_CLIENT], "address-change", gas_code)
    made = httpx.post(
        f"{gas.url}/r1/{EVENT}",
        headers={**gas_h, **consent, "X-OnceOnly-Fields": "address"},
        timeout=20,
    )
    assert made.status_code == 201, made.text
    addresses = [f"東京都町田市原町田{i + 1}丁目{i + 1}番" for i in range(12)]
    for i, address in enumerate(addresses):
        if i == 4:
            gas.stop(signal.SIGKILL)
        moved = _move(machida, keys[ONE_STOP], citizen, address, f"run-{i}")
        assert moved.status_code == 200, moved.text
        assert moved.headers["x-onceonly-told"] == GAS_CLIENT
    gas.start()
    _wait(lambda: len(_feed(gas, GAS_CLIENT, keys[GAS_CLIENT])) >= len(addresses), 30)
    time.sleep(2.5)  # a retry and a pull round later: still nothing told twice
    told = _feed(gas, GAS_CLIENT, keys[GAS_CLIENT])
    assert [t["change"]["address"] for t in told] == addresses  # every change, once, in order
    assert len({t["event_id"] for t in told}) == len(addresses)
    assert {t["subject"] for t in told} == {gas_code}
