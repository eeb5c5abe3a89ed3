"""Change subscriptions attacked from outside (docs/protocol.md §8–§9), between real processes:
the central server and two members' nodes as uvicorn processes on 127.0.0.1, started once for
the module.

Each test is an attack an adversary can mount with what it holds — its own API key, its own
subsystem's signing key, a captured signed request — and asserts that the attack fails, with
the exact status and code. An attack that succeeds is an ``xfail(strict=True)`` test naming it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from adapters.pseudonyms import PseudonymService
from exchange.canonical import sha256_b64
from exchange.db import database_url, is_postgres, make_engine
from exchange.envelope import RequestEnvelope, parse_unverified_response, seal_request
from exchange.events import new_event, sign_event
from exchange.identifiers import ClientId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.consumer import MESSAGE_PATH
from exchange.node_requests import sign_node_request
from exchange.ports import CITIZEN_AGENCY
from exchange.registry_admin import RegistryAdmin
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from exchange.store import EventInboxRow
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer
from onceonly.wiring import PSEUDONYMS, registry_database_url
from tests.conftest import PG_URL, _create_pg_database
from tests.integration.processes import Cluster, Proc, provisioned_cluster
from tests.integration.test_change_subscriptions_processes import (
    CHANGE,
    DELIVERY_BOUND_S,
    EVENT,
    ONE_STOP,
    _feed,
    _headers,
    _move,
    _status,
    _wait,
)
from tests.integration.test_consent_push_processes import (
    ADDRESS,
    GAS,
    GAS_CLIENT,
    MACHIDA,
    RESIDENTS,
    TAX,
    _citizen,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NHI = "JP/GOV/132098/national-health-insurance"
STREAMS = "/events/v1/streams"
INBOX = "/events/v1/inbox"
Env = tuple[Cluster, dict[str, str], Settings]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One cluster for every attack. The health insurance division may also record moves (an
    access right and a statute to ``address-change/v1``), so that two callers can reuse one
    idempotency key."""
    tmp: Path = tmp_path_factory.mktemp("attacks")
    url, drop = _create_pg_database(PG_URL) if PG_URL and is_postgres(PG_URL) else (None, None)
    c, settings, keys = provisioned_cluster(
        tmp / "data",
        (MACHIDA, GAS),
        log=tmp / "processes.log",
        database_url=url,
        citizens=10,
        env={
            "ONCEONLY_REGISTRY_REFRESH_S": "1",
            "ONCEONLY_CONSENT_CACHE_TTL_S": "30",
            "ONCEONLY_EVENT_PULL_INTERVAL_S": "2",
            "ONCEONLY_EVENT_RETRY_MAX_S": "2",
        },
    )
    central = make_engine(database_url(settings, "central"))
    admin = RegistryAdmin(central)
    admin.grant(ClientId.parse(NHI), _sid(CHANGE))
    admin.add_statute(
        "attack-test/nhi-moves",
        service=_sid(CHANGE),
        client=ClientId.parse(NHI),
        purposes=["address-change"],
        fields=["address", "moved_in_on"],
        ordinance="jp-national-health-insurance-act/art9",
    )
    central.dispose()
    try:
        for p in c.procs.values():
            p.start()
        yield c, keys, settings
    finally:
        c.stop_all()
        if drop is not None:
            drop()


def _sid(service: str) -> ServiceId:
    return ServiceId.parse(service)


# -- helpers ---------------------------------------------------------------------------------


def _person(settings: Settings, n: int) -> dict[str, str]:
    """The n-th person's codes at each agency concerned (the tax division's, the gas company's,
    the health insurance division's, the resident registry's) and the citizen's own identity."""
    engine = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        with engine.connect() as conn:
            tax_code = conn.execute(
                text(
                    "SELECT pseudonym FROM adapters_pseudonyms WHERE agency = :a"
                    " ORDER BY pseudonym LIMIT 1 OFFSET :n"
                ),
                {"a": TAX, "n": n},
            ).scalar_one()
    finally:
        engine.dispose()
    agencies = (GAS_CLIENT, NHI, RESIDENTS, CITIZEN_AGENCY)
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        svc = PseudonymService(store, (TAX, *agencies))
        return {TAX: tax_code} | {a: svc.translate(tax_code, TAX, a) for a in agencies}
    finally:
        store.dispose()


def _consent(
    env: Env,
    person: dict[str, str],
    *,
    mode: str = "standing",
    services: tuple[str, ...] = (EVENT,),
    fields: tuple[str, ...] = ("address",),
) -> dict[str, str]:
    c, keys, settings = env
    now = datetime.now(UTC).replace(microsecond=0)
    terms = {
        "subject": person[GAS_CLIENT],
        "subject_agency": "client",
        "client": GAS_CLIENT,
        "services": [s.rsplit("/", 1)[0] for s in services],
        "purpose": {"code": "address-change", "text_ja": "転居の通知", "text_en": "moves"},
        "fields": list(fields),
        "valid_from": (now - timedelta(minutes=1)).isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        "mode": mode,
        "data_retention_days": 30,
        "legal_text_version": "2026-11",
    }
    asked = httpx.post(
        f"{c.procs[str(GAS)].url}/platform/v1/consent-requests",
        json=terms,
        headers={"X-Road-Client": GAS_CLIENT, "X-OnceOnly-Api-Key": keys[GAS_CLIENT]},
        timeout=20,
    )
    assert asked.status_code == 201, asked.text
    approved = httpx.post(
        f"{c.procs['central'].url}/consent/v1/consent-requests/{asked.json()['id']}/approve",
        headers=_citizen(settings, person[CITIZEN_AGENCY]),
        timeout=20,
    )
    assert approved.status_code == 200, approved.text
    got = approved.json()
    return {"X-OnceOnly-Consent-Id": got["id"], "X-OnceOnly-Consent": got["artefact"]}


def _consent_action(env: Env, person: dict[str, str], consent_id: str, action: str) -> None:
    c, _, settings = env
    done = httpx.post(
        f"{c.procs['central'].url}/consent/v1/consents/{consent_id}/{action}",
        headers=_citizen(settings, person[CITIZEN_AGENCY]),
        timeout=20,
    )
    assert done.status_code == 200, done.text


def _gas(env: Env, person: dict[str, str], **extra: str) -> dict[str, str]:
    _, keys, _ = env
    return _headers(GAS_CLIENT, keys[GAS_CLIENT], "address-change", person[GAS_CLIENT], **extra)


def _tax(env: Env, person: dict[str, str], **extra: str) -> dict[str, str]:
    _, keys, _ = env
    return _headers(TAX, keys[TAX], "taxation", person[TAX], **extra)


def _node(env: Env, member: Any) -> Proc:
    return env[0].procs[str(member)]


def _problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    doc: dict[str, Any] = resp.json()
    assert doc["code"] == code, doc
    return doc


def _subscribe(env: Env, member: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{_node(env, member).url}/r1/{EVENT}", headers=headers, timeout=20)


def _signer(settings: Settings, client: str) -> MemberSigner:
    keys = KeyStore(settings.data_dir)
    return MemberSigner(load_private_key(keys.subsystem_key(ClientId.parse(client))))


def _deny_entries(env: Env, member: Any, stage: str) -> list[dict[str, Any]]:
    """The node's refusals recorded under ``stage`` (read as an auditor)."""
    _, _, settings = env
    issuer = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    auth = {"authorization": f"Bearer {issuer.issue('auditor-1', roles=('auditor',))}"}
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"decision": "deny", "limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        page = httpx.get(
            f"{_node(env, member).url}/audit/entries", params=params, headers=auth, timeout=20
        )
        assert page.status_code == 200, page.text
        found += [e["entry"] for e in page.json()["entries"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    return [e for e in found if e.get("extra", {}).get("stage") == stage]


def _post_event(node: Proc, wire: bytes) -> httpx.Response:
    return httpx.post(
        f"{node.url}{INBOX}",
        content=wire,
        headers={"content-type": "application/json"},
        timeout=20,
    )


def _forge(
    settings: Settings,
    *,
    signed_by: str,
    sender: str,
    recipient: str,
    seq: int,
    type: str,
    data: dict[str, Any],
) -> bytes:
    event = new_event(
        sender=sender, recipient=recipient, seq=seq, type=type, data=data, now=datetime.now(UTC)
    )
    return sign_event(event, _signer(settings, signed_by))


def _inbox_cursor(settings: Settings, sender: str, recipient: str) -> int:
    """The highest sequence number of ``sender > recipient`` applied at the recipient's node."""
    member = str(ClientId.parse(recipient).member).replace("/", "_")
    engine = make_engine(database_url(settings, f"node-{member}"))
    try:
        with engine.connect() as conn:
            value = conn.scalar(
                select(func.max(EventInboxRow.seq)).where(
                    EventInboxRow.stream == f"{sender} > {recipient}"
                )
            )
    finally:
        engine.dispose()
    return int(value or 0)


# -- subscribing -----------------------------------------------------------------------------


def test_a_subscription_needs_one_person_a_statutory_purpose_and_known_fields(env: Env) -> None:
    _, keys, _ = env
    person = _person(env[2], 1)
    no_subject = {k: v for k, v in _tax(env, person).items() if k != "X-OnceOnly-Subject"}
    _problem(_subscribe(env, MACHIDA, no_subject), 400, "Client.SubjectRequired")
    # A purpose the event declares, but not the one the tax division's statute names.
    other = _tax(env, person, **{"X-OnceOnly-Purpose": "benefit-eligibility"})
    _problem(_subscribe(env, MACHIDA, other), 403, "Server.ServerProxy.AccessDenied")
    # A purpose nobody declared.
    unknown = _tax(env, person, **{"X-OnceOnly-Purpose": "marketing"})
    _problem(_subscribe(env, MACHIDA, unknown), 403, "Server.ServerProxy.AccessDenied")
    # A field the event does not carry.
    extra = _tax(env, person, **{"X-OnceOnly-Fields": "address,household_id"})
    # (a refusal of step 9: status 403, though its code is Client.BadRequest)
    _problem(_subscribe(env, MACHIDA, extra), 403, "Client.BadRequest")
    # A subsystem with no access right to the event service at all (the one-stop desk).
    desk = _headers(ONE_STOP, keys[ONE_STOP], "address-change", person[CITIZEN_AGENCY])
    _problem(_subscribe(env, MACHIDA, desk), 403, "Server.ServerProxy.AccessDenied")


def test_a_subscription_with_another_agencys_code_finds_no_person(env: Env) -> None:
    """The gas company sends the tax division's code for the person as if it were its own."""
    person = _person(env[2], 2)
    consent = _consent(env, person)
    foreign = _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"})
    foreign["X-OnceOnly-Subject"] = person[TAX]
    _problem(_subscribe(env, GAS, foreign), 404, "Client.NotFound")
    # And the publisher's own code for the person is no better.
    foreign["X-OnceOnly-Subject"] = person[RESIDENTS]
    _problem(_subscribe(env, GAS, foreign), 404, "Client.NotFound")


def test_a_plain_subject_in_a_signed_envelope_is_refused(env: Env) -> None:
    """The tax division signs its own envelope with a plain subject (the publisher's code,
    learnt elsewhere) instead of the translator's sealed token, and posts it to the registry's
    node directly."""
    _, _, settings = env
    person = _person(settings, 1)
    now = datetime.now(UTC)
    envelope = RequestEnvelope(
        message_id=str(uuid.uuid4()),
        created_at=now,
        client=TAX,
        service=EVENT,
        method="POST",
        path="",
        purpose="taxation",
        subject=person[RESIDENTS],
        body_hash=_sha(b""),
    )
    wire, _ = seal_request(envelope, b"", _signer(settings, TAX))
    resp = httpx.post(
        f"{_node(env, MACHIDA).url}{MESSAGE_PATH}",
        content=wire,
        headers={"content-type": "application/json"},
        timeout=20,
    )
    assert resp.status_code == 200, resp.text  # a verified request gets a signed answer
    answer = parse_unverified_response(resp.content).envelope
    assert (answer.status, answer.error_code) == (400, "Client.PlainSubjectRefused")


def _sha(body: bytes) -> str:
    return sha256_b64(body)


def test_a_consent_covers_only_its_person_its_service_and_its_fields(env: Env) -> None:
    person, other = _person(env[2], 3), _person(env[2], 4)
    consent = _consent(env, person)
    # Another person under this person's consent.
    for_other = _gas(env, other, **consent, **{"X-OnceOnly-Fields": "address"})
    _problem(_subscribe(env, GAS, for_other), 403, "Server.ServerProxy.ConsentRefused")
    # Fields beyond the consent (it covers the address only).
    wider = _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address,moved_in_on"})
    _problem(_subscribe(env, GAS, wider), 403, "Server.ServerProxy.ConsentRefused")
    # A consent to read the address is no consent to be told of moves.
    read_only = _consent(env, person, services=(ADDRESS,))
    as_read = _gas(env, person, **read_only, **{"X-OnceOnly-Fields": "address"})
    _problem(_subscribe(env, GAS, as_read), 403, "Server.ServerProxy.ConsentRefused")
    # No fields named: the event's all, beyond the consent — refused or minimised, never wider.
    unnamed = _subscribe(env, GAS, _gas(env, person, **consent))
    if unnamed.status_code == 201:
        assert unnamed.json()["fields"] == ["address"]
    else:
        _problem(unnamed, 403, "Server.ServerProxy.ConsentRefused")


def test_a_paused_or_revoked_consent_subscribes_nothing_and_stops_what_it_made(env: Env) -> None:
    _, keys, settings = env
    person = _person(settings, 5)
    consent = _consent(env, person)
    cid = consent["X-OnceOnly-Consent-Id"]
    made = _subscribe(env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"}))
    assert made.status_code == 201, made.text
    sub_id = made.json()["subscription_id"]
    _consent_action(env, person, cid, "pause")
    _wait(lambda: _status(settings, sub_id) == "paused", DELIVERY_BOUND_S)
    again = _subscribe(env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"}))
    _problem(again, 403, "Server.ServerProxy.ConsentRefused")
    assert _status(settings, sub_id) == "paused"
    before = len(_feed(_node(env, GAS), GAS_CLIENT, keys[GAS_CLIENT]))
    moved = _move(_node(env, MACHIDA), keys[ONE_STOP], person[CITIZEN_AGENCY], "町田市A", _key())
    assert moved.status_code == 200, moved.text
    assert moved.headers.get("x-onceonly-told", "") == ""  # nobody told while paused
    assert len(_feed(_node(env, GAS), GAS_CLIENT, keys[GAS_CLIENT])) == before
    # Revoked: the subscription ends, and the consent subscribes nothing any more.
    _consent_action(env, person, cid, "revoke")
    _wait(lambda: _status(settings, sub_id) == "ended", DELIVERY_BOUND_S)
    revoked = _subscribe(env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"}))
    _problem(revoked, 403, "Server.ServerProxy.ConsentRefused")


def test_a_one_time_consent_ends_its_subscription_once_spent(env: Env) -> None:
    """Subscribing spends a one-time consent, and the consent service's "spent" push ends the
    subscription — every time, though the push races the subscription's creation."""
    _, keys, settings = env
    person = _person(settings, 6)
    made: list[str] = []
    for _ in range(ONE_TIME_ROUNDS):
        consent = _consent(env, person, mode="one-time")
        sub = _subscribe(env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"}))
        assert sub.status_code == 201, sub.text
        made.append(sub.json()["subscription_id"])
        _wait(lambda: _status(settings, made[-1]) == "ended", DELIVERY_BOUND_S)
        again = _subscribe(
            env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"})
        )
        _problem(again, 403, "Server.ServerProxy.ConsentRefused")  # spent: covers nothing more
    assert len(set(made)) == ONE_TIME_ROUNDS
    moved = _move(_node(env, MACHIDA), keys[ONE_STOP], person[CITIZEN_AGENCY], "町田市B", _key())
    assert moved.status_code == 200, moved.text
    assert GAS_CLIENT not in moved.headers.get("x-onceonly-told", "")


ONE_TIME_ROUNDS = 3


def _key() -> str:
    return f"attack-{uuid.uuid4().hex[:12]}"


# -- another's subscription ------------------------------------------------------------------


def _sub_url(env: Env, member: Any, tail: str) -> str:
    return f"{_node(env, member).url}/r1/{EVENT}/subscriptions/{tail}"


def _nhi(env: Env, person: dict[str, str]) -> dict[str, str]:
    _, keys, _ = env
    return _headers(NHI, keys[NHI], "benefit-eligibility", person[NHI])


def test_another_subscribers_subscription_is_none_to_read_or_end(env: Env) -> None:
    _, _, settings = env
    person = _person(settings, 7)
    made = _subscribe(env, MACHIDA, _tax(env, person))
    assert made.status_code == 201, made.text
    sub_id = made.json()["subscription_id"]
    nhi = _nhi(env, person)  # the health insurance division: its own statute, another subscriber
    assert _subscribe(env, MACHIDA, nhi).status_code == 201
    url = _sub_url(env, MACHIDA, sub_id)
    unknown = _problem(
        httpx.get(_sub_url(env, MACHIDA, str(uuid.uuid4())), headers=nhi, timeout=20),
        404,
        "Client.NotFound",
    )
    seen = _problem(httpx.get(url, headers=nhi, timeout=20), 404, "Client.NotFound")
    assert seen["detail"] == unknown["detail"]  # another's looks like none
    _problem(httpx.delete(url, headers=nhi, timeout=20), 404, "Client.NotFound")
    # A query string naming the owner changes nothing.
    q = httpx.get(url, params={"subscriber": TAX, "client": TAX}, headers=nhi, timeout=20)
    _problem(q, 404, "Client.NotFound")
    assert _status(settings, sub_id) == "active"
    own = httpx.get(url, headers=_tax(env, person), timeout=20)
    assert own.status_code == 200, own.text
    assert own.json()["status"] == "active"


@pytest.mark.parametrize(
    "tail",
    [
        "..%2F..%2Faddress%2Fv1",
        "%2E%2E/x",
        "x" * 4000,
        "住所",
        "%00",
        "%20",
        "00000000-0000-0000-0000-000000000000",
    ],
    ids=["dotdot-encoded", "dotdot", "very-long", "non-ascii", "nul", "space", "zero-uuid"],
)
def test_path_tricks_on_a_subscription_are_refused_as_problems(env: Env, tail: str) -> None:
    person = _person(env[2], 7)
    for method in ("GET", "DELETE"):
        resp = httpx.request(
            method, _sub_url(env, MACHIDA, tail), headers=_tax(env, person), timeout=20
        )
        assert resp.status_code in (400, 404), resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")


def test_a_raw_dotdot_path_does_not_escape_the_subscription(env: Env) -> None:
    """``…/subscriptions/../x`` sent as is (not normalised by the client)."""
    person = _person(env[2], 7)
    base = _node(env, MACHIDA).url
    with httpx.Client(base_url=base, timeout=20) as http:
        req = http.build_request("GET", "/", headers=_tax(env, person))
        req.url = req.url.copy_with(raw_path=f"/r1/{EVENT}/subscriptions/../x".encode())
        resp = http.send(req)
    assert resp.status_code in (400, 404), resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


def test_an_id_with_trailing_characters_is_not_that_subscription(env: Env) -> None:
    person = _person(env[2], 7)
    made = _subscribe(env, MACHIDA, _tax(env, person))
    assert made.status_code in (200, 201), made.text
    sub_id = made.json()["subscription_id"]
    resp = httpx.get(_sub_url(env, MACHIDA, sub_id + "junk"), headers=_tax(env, person), timeout=20)
    _problem(resp, 404, "Client.NotFound")


def test_a_subscription_is_read_and_ended_only_with_get_and_delete(env: Env) -> None:
    person = _person(env[2], 7)
    made = _subscribe(env, MACHIDA, _tax(env, person))
    sub_id = made.json()["subscription_id"]
    for method in ("PUT", "PATCH", "POST"):
        resp = httpx.request(
            method, _sub_url(env, MACHIDA, sub_id), headers=_tax(env, person), timeout=20
        )
        _problem(resp, 405, "Client.MethodNotAllowed")
    listing = httpx.get(
        f"{_node(env, MACHIDA).url}/r1/{EVENT}/subscriptions", headers=_tax(env, person), timeout=20
    )
    _problem(listing, 405, "Client.MethodNotAllowed")  # no listing of subscriptions


# -- the change feed -------------------------------------------------------------------------


def test_the_change_feed_refuses_strangers_and_bad_cursors_and_records_it(env: Env) -> None:
    _, keys, _ = env
    url = f"{_node(env, MACHIDA).url}/changes/v1"
    before = len(_deny_entries(env, MACHIDA, "changes-api"))
    attempts: list[tuple[dict[str, str], dict[str, Any], int]] = [
        ({}, {}, 400),  # Client.MissingClient
        ({"X-Road-Client": TAX}, {}, 401),
        ({"X-Road-Client": TAX, "X-OnceOnly-Api-Key": keys[NHI]}, {}, 401),  # another's key
        ({"X-Road-Client": TAX, "X-OnceOnly-Api-Key": keys[TAX] + "x"}, {}, 401),
        ({"X-Road-Client": GAS_CLIENT, "X-OnceOnly-Api-Key": keys[GAS_CLIENT]}, {}, 401),
    ]
    own = {"X-Road-Client": TAX, "X-OnceOnly-Api-Key": keys[TAX]}
    for params in (
        {"after": -1},
        {"after": 2**63},
        {"after": "abc"},
        {"limit": 0},
        {"limit": 100000},
        {"limit": -5},
    ):
        attempts.append((own, params, 400))
    for headers, params, status in attempts:
        resp = httpx.get(url, headers=headers, params=params, timeout=20)
        code = resp.json().get("code") if headers != own else "Client.BadRequest"
        doc = _problem(resp, status, code)
        assert doc["status"] == status
    recorded = _deny_entries(env, MACHIDA, "changes-api")[before:]
    assert [e["status"] for e in recorded] == [s for _, _, s in attempts]
    assert {e["extra"]["route"] for e in recorded} == {"GET /changes/v1"}
    ok = httpx.get(url, headers=own, params={"after": 2**62, "limit": 500}, timeout=20)
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"changes": [], "cursor": 2**62}


# -- catch-up pulls --------------------------------------------------------------------------


def _pull_as(
    env: Env, signed_by: str, *, claims: str | None = None, sender: str = RESIDENTS, **more: Any
) -> httpx.Response:
    _, _, settings = env
    headers = sign_node_request(
        _signer(settings, signed_by),
        ClientId.parse(signed_by),
        "GET",
        STREAMS,
        b"",
        now=more.pop("now", datetime.now(UTC)),
    )
    if claims is not None:
        headers["x-onceonly-node-client"] = claims
    return httpx.get(
        f"{_node(env, MACHIDA).url}{STREAMS}",
        params={"sender": sender, "after": 0, **more},
        headers=headers,
        timeout=20,
    )


def test_a_pull_only_ever_returns_the_callers_own_stream(env: Env) -> None:
    _, keys, settings = env
    person = _person(settings, 8)
    # The tax division has a change waiting on its stream; the gas company tries to read it.
    assert _subscribe(env, MACHIDA, _tax(env, person)).status_code in (200, 201)
    moved = _move(_node(env, MACHIDA), keys[ONE_STOP], person[CITIZEN_AGENCY], "町田市C", _key())
    assert TAX in moved.headers["x-onceonly-told"]
    before = len(_deny_entries(env, MACHIDA, "events-pull"))
    unsigned = httpx.get(
        f"{_node(env, MACHIDA).url}{STREAMS}", params={"sender": RESIDENTS}, timeout=20
    )
    _problem(unsigned, 401, unsigned.json()["code"])
    # Signed by the gas company, claiming to be the tax division.
    _problem(_pull_as(env, GAS_CLIENT, claims=TAX), 401, unsigned.json()["code"])
    # Signed an hour ago (outside the clock-skew window).
    stale = _pull_as(env, TAX, now=datetime.now(UTC) - timedelta(hours=1))
    _problem(stale, 401, unsigned.json()["code"])
    recorded = _deny_entries(env, MACHIDA, "events-pull")[before:]
    assert [e["status"] for e in recorded] == [401, 401, 401]
    # Its own signature: its own stream, whatever the sender it names.
    for sender in (RESIDENTS, TAX, GAS_CLIENT, "JP/GOV/132098/nothing", "x" * 255):
        got = _pull_as(env, GAS_CLIENT, sender=sender)
        assert got.status_code == 200, got.text
        assert got.json()["stream"] == f"{sender} > {GAS_CLIENT}"
        assert all(w["event"]["recipient"] == GAS_CLIENT for w in got.json()["events"])
    # The tax division's own pull holds the change; a replay of its signed request (captured)
    # answers the same stream, the tax division's own, never another's.
    _, _, settings = env
    headers = sign_node_request(
        _signer(settings, TAX), ClientId.parse(TAX), "GET", STREAMS, b"", now=datetime.now(UTC)
    )
    first = httpx.get(
        f"{_node(env, MACHIDA).url}{STREAMS}",
        params={"sender": RESIDENTS},
        headers=headers,
        timeout=20,
    )
    assert first.status_code == 200
    assert any(w["event"]["recipient"] == TAX for w in first.json()["events"])
    replayed = httpx.get(
        f"{_node(env, MACHIDA).url}{STREAMS}",
        params={"sender": RESIDENTS, "after": 0},
        headers={**headers, "x-onceonly-node-client": GAS_CLIENT},
        timeout=20,
    )
    _problem(replayed, 401, unsigned.json()["code"])
    for_other = httpx.get(
        f"{_node(env, MACHIDA).url}{STREAMS}",
        params={"sender": RESIDENTS},
        headers=headers,
        timeout=20,
    )
    assert for_other.json()["stream"] == f"{RESIDENTS} > {TAX}"
    bad = httpx.get(
        f"{_node(env, MACHIDA).url}{STREAMS}",
        params={"sender": RESIDENTS, "limit": 0},
        headers=headers,
        timeout=20,
    )
    _problem(bad, 400, "Client.BadRequest")
    no_sender = httpx.get(f"{_node(env, MACHIDA).url}{STREAMS}", headers=headers, timeout=20)
    _problem(no_sender, 400, "Client.BadRequest")


# -- forged events ---------------------------------------------------------------------------

INVALID = "Server.ServerProxy.InvalidSignature"
GAS_SERVICE = "JP/COM/9000000000002/gas/contract/v1"


def _next_seq(env: Env, sender: str, recipient: str) -> int:
    return _inbox_cursor(env[2], sender, recipient) + 1


def test_forged_change_events_are_refused_or_land_without_a_person(env: Env) -> None:
    _, keys, settings = env
    person = _person(settings, 1)
    made = _subscribe(env, MACHIDA, _tax(env, person))
    assert made.status_code in (200, 201), made.text
    sub_id = made.json()["subscription_id"]
    machida = _node(env, MACHIDA)
    feed_before = _feed(machida, TAX, keys[TAX])
    change = {"address": "偽の住所", "moved_in_on": "2026-12-01"}
    data = {
        "subscription_id": sub_id,
        "service": EVENT,
        "change": change,
        "change_id": "0" * 32,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    # The gas company signs as the resident registry.
    as_registry = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=RESIDENTS,
        recipient=TAX,
        seq=_next_seq(env, RESIDENTS, TAX),
        type="registry.change/v1",
        data=data,
    )
    _problem(_post_event(machida, as_registry), 400, INVALID)
    # ... as the consent service.
    as_consent = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender="consent-service",
        recipient=TAX,
        seq=_next_seq(env, "consent-service", TAX),
        type="registry.change/v1",
        data=data,
    )
    _problem(_post_event(machida, as_consent), 400, INVALID)
    # As itself, naming the registry's event service and the tax division's subscription.
    seq = _next_seq(env, GAS_CLIENT, TAX)
    as_itself = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=GAS_CLIENT,
        recipient=TAX,
        seq=seq,
        type="registry.change/v1",
        data=data,
    )
    _problem(_post_event(machida, as_itself), 400, "Client.BadRequest")
    # Tampered after signing (the registry's own event, its change rewritten) is not ours to
    # make; a signature over other bytes: our own event with its data swapped.
    wire = json.loads(as_itself)
    wire["event"]["data"]["service"] = GAS_SERVICE
    _problem(_post_event(machida, json.dumps(wire).encode()), 400, INVALID)
    # Addressed to a subsystem this node does not host.
    away = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=GAS_CLIENT,
        recipient=GAS_CLIENT,
        seq=1,
        type="registry.change/v1",
        data=data,
    )
    _problem(_post_event(machida, away), 400, "Client.EventMisaddressed")
    # As itself, naming a service of its own and the tax division's subscription id: if it is
    # taken at all, it names no person (the link is the registry's subscription, not this one).
    own_service = dict(data, service=GAS_SERVICE)
    wire_ok = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=GAS_CLIENT,
        recipient=TAX,
        seq=seq,
        type="registry.change/v1",
        data=own_service,
    )
    resp = _post_event(machida, wire_ok)
    assert resp.status_code in (200, 400), resp.text
    after = _feed(machida, TAX, keys[TAX])
    new = [ch for ch in after if ch["cursor"] not in {x["cursor"] for x in feed_before}]
    assert all(ch["subject"] is None for ch in new), new
    assert all(ch["service"] != EVENT for ch in new)


def test_an_unsolicited_change_event_is_refused(env: Env) -> None:
    _, keys, settings = env
    machida = _node(env, MACHIDA)
    before = len(_feed(machida, NHI, keys[NHI]))
    data = {
        "subscription_id": str(uuid.uuid4()),
        "service": GAS_SERVICE,
        "change": {"address": "spam"},
        "change_id": "1" * 32,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    wire = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=GAS_CLIENT,
        recipient=NHI,
        seq=_next_seq(env, GAS_CLIENT, NHI),
        type="registry.change/v1",
        data=data,
    )
    resp = _post_event(machida, wire)
    assert len(_feed(machida, NHI, keys[NHI])) == before
    _problem(resp, 400, "Client.BadRequest")


def test_a_member_cannot_resume_a_paused_subscription_with_a_forged_consent_status(
    env: Env,
) -> None:
    _, keys, settings = env
    person = _person(settings, 0)
    consent = _consent(env, person)
    cid = consent["X-OnceOnly-Consent-Id"]
    made = _subscribe(env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"}))
    assert made.status_code == 201, made.text
    sub_id = made.json()["subscription_id"]
    _consent_action(env, person, cid, "pause")
    _wait(lambda: _status(settings, sub_id) == "paused", DELIVERY_BOUND_S)
    # The gas company signs, as itself, a consent status event to the registry: "active".
    data = {
        "consent_id": cid,
        "status": "active",
        "action": "resumed",
        "version": 99,
        "at": datetime.now(UTC).isoformat(),
    }
    wire = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=GAS_CLIENT,
        recipient=RESIDENTS,
        seq=_next_seq(env, GAS_CLIENT, RESIDENTS),
        type="consent.status/v1",
        data=data,
    )
    _problem(_post_event(_node(env, MACHIDA), wire), 400, "Client.BadRequest")
    moved = _move(_node(env, MACHIDA), keys[ONE_STOP], person[CITIZEN_AGENCY], "町田市Z", _key())
    assert moved.status_code == 200, moved.text
    assert GAS_CLIENT not in moved.headers.get("x-onceonly-told", "")  # still paused
    assert _status(settings, sub_id) == "paused"
    # Nor does it end another subscriber's subscription on consent with a forged "revoked".
    data |= {"status": "revoked", "action": "revoked"}
    wire = _forge(
        settings,
        signed_by=GAS_CLIENT,
        sender=GAS_CLIENT,
        recipient=RESIDENTS,
        seq=_next_seq(env, GAS_CLIENT, RESIDENTS),
        type="consent.status/v1",
        data=data,
    )
    _problem(_post_event(_node(env, MACHIDA), wire), 400, "Client.BadRequest")
    assert _status(settings, sub_id) == "paused"
    refusals = _deny_entries(env, MACHIDA, "event")
    assert refusals[-1]["status"] == 400


# -- publication -----------------------------------------------------------------------------


def test_a_change_is_published_once_per_caller_and_key_minimised_and_naming_no_one(
    env: Env,
) -> None:
    _, keys, settings = env
    person = _person(settings, 9)
    machida, gas = _node(env, MACHIDA), _node(env, GAS)
    tax_sub = _subscribe(env, MACHIDA, _tax(env, person)).json()["subscription_id"]
    consent = _consent(env, person)
    gas_sub = _subscribe(env, GAS, _gas(env, person, **consent, **{"X-OnceOnly-Fields": "address"}))
    assert gas_sub.status_code == 201, gas_sub.text
    gas_id = gas_sub.json()["subscription_id"]
    key = _key()
    desk = person[CITIZEN_AGENCY]
    first = _move(machida, keys[ONE_STOP], desk, "町田市中町一丁目1番1号", key)
    assert first.status_code == 200, first.text
    assert set(first.headers["x-onceonly-told"].split(",")) == {TAX, GAS_CLIENT}
    retry = _move(machida, keys[ONE_STOP], desk, "町田市中町一丁目1番1号", key)
    assert retry.status_code == 200, retry.text
    # The same key with another body: the registry refuses it, nothing is published.
    other_body = _move(machida, keys[ONE_STOP], desk, "町田市別の住所", key)
    assert other_body.status_code == 409, other_body.text
    # Another caller reusing the key makes a change of its own: published separately.
    nhi = httpx.post(
        f"{machida.url}/r1/{CHANGE}",
        json={"address": "町田市原町田二丁目2番2号", "moved_in_on": "2026-12-02"},
        headers=_headers(NHI, keys[NHI], "address-change", person[NHI], **{"Idempotency-Key": key}),
        timeout=20,
    )
    assert nhi.status_code == 200, nhi.text
    assert set(nhi.headers["x-onceonly-told"].split(",")) == {TAX, GAS_CLIENT}

    def mine(node: Proc, client: str, sub: str) -> list[dict[str, Any]]:
        return [ch for ch in _feed(node, client, keys[client]) if ch["subscription_id"] == sub]

    _wait(lambda: len(mine(machida, TAX, tax_sub)) >= 2, DELIVERY_BOUND_S)
    _wait(lambda: len(mine(gas, GAS_CLIENT, gas_id)) >= 2, DELIVERY_BOUND_S)
    time.sleep(2)  # a third event, if one were sent, would have arrived by now
    told_tax, told_gas = mine(machida, TAX, tax_sub), mine(gas, GAS_CLIENT, gas_id)
    assert [c["change"]["address"] for c in told_tax] == [
        "町田市中町一丁目1番1号",
        "町田市原町田二丁目2番2号",
    ]
    assert all(set(c["change"]) == {"address", "moved_in_on"} for c in told_tax)
    assert [c["change"] for c in told_gas] == [
        {"address": "町田市中町一丁目1番1号"},
        {"address": "町田市原町田二丁目2番2号"},
    ]
    assert {c["subject"] for c in told_tax} == {person[TAX]}
    assert {c["subject"] for c in told_gas} == {person[GAS_CLIENT]}
    # On the wire: the subscription, the service, the allowed fields — no code of the person.
    pulled = _pull_as(env, GAS_CLIENT)
    wires = [w for w in pulled.json()["events"] if w["event"]["data"]["subscription_id"] == gas_id]
    assert len(wires) == 2
    for w in wires:
        assert set(w["event"]["data"]) == {
            "subscription_id",
            "service",
            "change",
            "change_id",
            "occurred_at",
        }
        assert set(w["event"]["data"]["change"]) == {"address"}
        raw = json.dumps(w, ensure_ascii=False)
        for code in person.values():
            assert code not in raw
    assert wires[0]["event"]["data"]["change_id"] != wires[1]["event"]["data"]["change_id"]
