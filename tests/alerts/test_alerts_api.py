"""The citizen's alerts API (``/me/alerts``, ``/me/alert-settings``) over FastAPI's TestClient
with development-issuer tokens, on the node's real database."""

from __future__ import annotations

import warnings
from collections.abc import Collection
from pathlib import Path

import pytest
from fastapi import FastAPI

from alerts.api import build_router
from exchange.errors import ClientError, NotFoundError
from exchange.tokens import DevIssuer, Principal
from exchange.web.problems import install_problem_handlers
from tests.alerts.conftest import ALICE, BOB, GAS, ORIGIN, TAX, World, read

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

ALIASES = {"alice": {ALICE, "tax-code-of-alice"}, "bob": {BOB}}


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer.load_or_create(tmp_path, issuer="https://id.example", audience="onceonly")


@pytest.fixture
def client(world: World, issuer: DevIssuer) -> TestClient:
    world.log.append_many(
        [
            read(0, client=GAS),
            read(1, kind="refusal", decision="deny", basis=None),
            read(2, client=GAS, subject=BOB),
            read(3, client=TAX, subject="tax-code-of-alice"),
        ]
    )
    world.worker().run_once()

    def subjects_of(p: Principal) -> Collection[str]:
        return ALIASES.get(p.subject, {p.subject})

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(build_router(world.inbox(), ORIGIN, issuer.verifier(), subjects_of))
    return TestClient(app, raise_server_exceptions=False)


def _auth(issuer: DevIssuer, sub: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(sub, roles=roles or ('citizen',))}"}


def test_a_citizen_lists_their_alerts_of_every_subject_newest_first(
    client: TestClient, issuer: DevIssuer
) -> None:
    r = client.get("/me/alerts", headers=_auth(issuer, "alice"))
    assert r.status_code == 200
    body = r.json()
    assert [(a["rule"], a["recipient"], a["entry_index"]) for a in body["alerts"]] == [
        ("new-recipient", TAX, 3),
        ("refused", TAX, 1),
        ("new-recipient", GAS, 0),
        ("read-without-consent", GAS, 0),
    ]
    assert body["unread"] == 4
    first = body["alerts"][-1]
    assert first["text"]["en"].startswith("A private organisation read your data")
    assert "民間の事業者" in first["text"]["ja"]
    assert len(first["leaf_hash"]) == 44
    text = r.text
    assert ALICE not in text
    assert "tax-code-of-alice" not in text


def test_paging_marking_read_and_another_citizens_alert(
    client: TestClient, issuer: DevIssuer
) -> None:
    alice, bob = _auth(issuer, "alice"), _auth(issuer, "bob")
    page = client.get("/me/alerts?limit=3", headers=alice).json()
    assert len(page["alerts"]) == 3
    rest = client.get(f"/me/alerts?limit=3&cursor={page['next_cursor']}", headers=alice).json()
    assert len(rest["alerts"]) == 1
    assert rest["next_cursor"] is None
    target = rest["alerts"][0]["id"]
    assert client.post(f"/me/alerts/{target}/read", headers=bob).status_code == 404
    done = client.post(f"/me/alerts/{target}/read", headers=alice)
    assert done.status_code == 200
    assert done.json()["read"] is True
    unread = client.get("/me/alerts?unread=true", headers=alice).json()
    assert unread["unread"] == 3
    assert target not in [a["id"] for a in unread["alerts"]]
    assert client.post("/me/alerts/999999/read", headers=alice).status_code == 404


def test_settings_are_read_and_saved_for_every_subject(
    client: TestClient, issuer: DevIssuer
) -> None:
    alice = _auth(issuer, "alice")
    got = client.get("/me/alert-settings", headers=alice).json()
    assert got == {
        "enabled": {
            "read-without-consent": True,
            "new-recipient": True,
            "unusual-volume": True,
            "refused": True,
        },
        "email": None,
    }
    put = client.put(
        "/me/alert-settings",
        headers=alice,
        json={"enabled": {"refused": False}, "email": "alice@mail.example"},
    )
    assert put.status_code == 200
    assert put.json()["enabled"]["refused"] is False
    assert put.json()["email"] == "alice@mail.example"
    assert client.get("/me/alert-settings", headers=alice).json() == put.json()
    assert client.get("/me/alert-settings", headers=_auth(issuer, "bob")).json()["email"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not an address"},
        {"email": "a@b.example\r\nBcc: x@y.example"},
        {"enabled": {"no-such-rule": True}},
        {"enabled": {"refused": "maybe"}},
        {"enabled": {"refused": 0}},
        {"other": 1},
    ],
)
def test_bad_settings_are_a_problem_400(
    client: TestClient, issuer: DevIssuer, body: dict[str, object]
) -> None:
    r = client.put("/me/alert-settings", headers=_auth(issuer, "alice"), json=body)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")


def test_alerts_need_a_citizens_token(client: TestClient, issuer: DevIssuer) -> None:
    assert client.get("/me/alerts").status_code == 401
    assert client.get("/me/alerts", headers=_auth(issuer, "alice", "auditor")).status_code == 403


def test_the_portals_remote_backend_speaks_this_api(client: TestClient, issuer: DevIssuer) -> None:
    from portal.ports import Caller
    from portal.remote import RemoteAlerts

    token = issuer.issue("alice", roles=("citizen",))
    caller = Caller(issuer.verifier().verify(token), token)
    remote = RemoteAlerts(client, "http://testserver")
    page = remote.list_alerts(caller, limit=10)
    assert page["unread"] == 4
    remote.mark_read(caller, page["alerts"][0]["id"])
    assert remote.list_alerts(caller, limit=10)["unread"] == 3
    saved = remote.save_settings(caller, {"refused": False}, "alice@mail.example")
    assert saved["enabled"]["refused"] is False
    assert remote.settings(caller) == saved
    with pytest.raises(NotFoundError):
        remote.mark_read(caller, 987654)
    with pytest.raises(ClientError):
        remote.save_settings(caller, {}, "no address")


def test_ids_beyond_an_sql_integer_are_no_alert(client: TestClient, issuer: DevIssuer) -> None:
    alice = _auth(issuer, "alice")
    assert client.post(f"/me/alerts/{2**31}/read", headers=alice).status_code == 404
    assert client.post(f"/me/alerts/{2**63}/read", headers=alice).status_code == 404
    assert client.get(f"/me/alerts?cursor={2**31}", headers=alice).status_code == 400
    assert client.get(f"/me/alerts?cursor={2**31 - 1}", headers=alice).status_code == 200
