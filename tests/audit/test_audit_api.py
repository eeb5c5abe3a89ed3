"""The auditor and citizen APIs over FastAPI's TestClient, with development-issuer tokens."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from audit import merkle
from audit.api import build_router
from audit.checkpoint import verify_checkpoint
from audit.completeness import CompletenessError, SubjectProof, verify_record
from audit.log import TransparencyLog
from audit.verify import verify_export
from exchange.tokens import DevIssuer, Principal
from exchange.web.problems import install_problem_handlers
from tests.audit.audit_factories import T0, make_event

with warnings.catch_warnings():
    # Starlette warns that its TestClient prefers httpx2, which is not a dependency (yet).
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

ALICE, BOB = "ps-alice", "ps-bob"


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer.load_or_create(tmp_path, issuer="https://id.example", audience="onceonly")


@pytest.fixture
def client(log: TransparencyLog, issuer: DevIssuer) -> TestClient:
    log.append_many(
        [make_event(i, subject=ALICE if i % 3 else BOB) for i in range(12)]
        + [make_event(12, subject=ALICE, kind="refusal", decision="deny", consent_id="c-42")]
    )

    def subjects_of(p: Principal) -> Collection[str]:
        return {p.subject, f"{p.subject}-alias"}

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_router(log, issuer.verifier(), subjects_of, clock=lambda: T0 + timedelta(days=1))
    )
    return TestClient(app, raise_server_exceptions=False)


def _auth(issuer: DevIssuer, sub: str, *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(sub, roles=roles)}"}


@pytest.fixture
def auditor(issuer: DevIssuer) -> dict[str, str]:
    return _auth(issuer, "auditor-1", "auditor")


def test_auditor_searches_by_subject_and_decision_with_pagination(
    client: TestClient, auditor: dict[str, str]
) -> None:
    r = client.get("/audit/entries", params={"subject": BOB, "limit": 2}, headers=auditor)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["index"] for e in body["entries"]] == [0, 3]
    r2 = client.get(
        "/audit/entries",
        params={"subject": BOB, "limit": 2, "cursor": body["next_cursor"]},
        headers=auditor,
    )
    assert [e["index"] for e in r2.json()["entries"]] == [6, 9]
    denied = client.get("/audit/entries", params={"decision": "deny"}, headers=auditor).json()
    assert [e["index"] for e in denied["entries"]] == [12]
    window = client.get(
        "/audit/entries",
        params={"since": "2026-11-23T09:02:00Z", "until": "2026-11-23T09:04:00Z"},
        headers=auditor,
    ).json()
    assert [e["index"] for e in window["entries"]] == [2, 3]


def test_entry_comes_with_an_inclusion_proof_against_a_signed_checkpoint(
    client: TestClient, auditor: dict[str, str], log: TransparencyLog
) -> None:
    r = client.get("/audit/entries/5", headers=auditor)
    assert r.status_code == 200
    body = r.json()
    cp = verify_checkpoint(body["checkpoint"], log.verifier())
    proof = [base64.b64decode(h) for h in body["inclusion_proof"]]
    leaf = base64.b64decode(body["leaf_hash"])
    assert merkle.verify_inclusion(leaf, 5, cp.size, proof, cp.root)


def test_checkpoint_history_consistency_and_export_verify_offline(
    client: TestClient, auditor: dict[str, str], log: TransparencyLog
) -> None:
    first = client.get("/audit/checkpoint", headers=auditor)
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/plain")
    log.append(make_event(50))
    log.publish_checkpoint(T0 + timedelta(days=2))
    history = client.get("/audit/checkpoints", headers=auditor).json()["checkpoints"]
    assert [c["size"] for c in history] == [14, 13]
    proof = client.get(
        "/audit/consistency", params={"first": 13, "second": 14}, headers=auditor
    ).json()["proof"]
    assert merkle.verify_consistency(
        13,
        14,
        base64.b64decode(history[1]["root"]),
        base64.b64decode(history[0]["root"]),
        [base64.b64decode(h) for h in proof],
    )
    export = client.get("/audit/export", headers=auditor)
    assert export.headers["content-type"].startswith("application/jsonl")
    latest = client.get("/audit/checkpoint", headers=auditor).text
    report = verify_export(latest, export.text.splitlines(), log.vkey(), first.text)
    assert report, report.reasons


def test_citizen_sees_only_their_own_entries_in_plain_words_with_proofs(
    client: TestClient, issuer: DevIssuer, log: TransparencyLog
) -> None:
    r = client.get("/me/accesses", headers=_auth(issuer, ALICE, "citizen"))
    assert r.status_code == 200
    body = r.json()
    indices = [a["index"] for a in body["accesses"]]
    assert indices == [i for i in range(13) if i % 3] + [12]
    assert all(a["entry"]["subject"] == ALICE for a in body["accesses"])
    cp = verify_checkpoint(body["checkpoint"], log.verifier())
    for a in body["accesses"]:
        proof = [base64.b64decode(h) for h in a["inclusion_proof"]]
        assert merkle.verify_inclusion(
            base64.b64decode(a["leaf_hash"]), a["index"], cp.size, proof, cp.root
        )
    refused = body["accesses"][-1]
    assert refused["allowed"] is False
    assert "refused" in refused["text"]["en"]
    assert "c-42" in refused["text"]["en"]
    assert "拒否" in refused["text"]["ja"]
    assert "同意" in refused["text"]["ja"]
    first = body["accesses"][0]
    assert "JP/GOV/132098 (tax)" in first["text"]["en"]
    assert "地方税法" in first["text"]["ja"]
    assert "18時01分" in first["text"]["ja"]  # 09:01 UTC shown in Japan time
    bob = client.get("/me/accesses", headers=_auth(issuer, BOB, "citizen")).json()
    assert {a["entry"]["subject"] for a in bob["accesses"]} == {BOB}
    assert not set(indices) & {a["index"] for a in bob["accesses"]}


def test_citizen_cannot_use_the_auditor_api(client: TestClient, issuer: DevIssuer) -> None:
    citizen = _auth(issuer, ALICE, "citizen")
    for path in ("/audit/entries", "/audit/entries/0", "/audit/checkpoint", "/audit/export"):
        r = client.get(path, headers=citizen)
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get("/audit/entries").status_code == 401


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/audit/entries", {"limit": "0"}),
        ("/audit/entries", {"limit": "abc"}),
        ("/audit/entries", {"cursor": "-1"}),
        ("/audit/entries", {"since": "yesterday"}),
        ("/audit/entries", {"since": "2026-11-23T09:00:00"}),
        ("/audit/entries", {"until": "0.5"}),  # a number is no RFC 3339 time (found by fuzzing)
        ("/audit/entries", {"until": "1764000000"}),
        ("/audit/entries", {"since": "2026-11-23"}),
        ("/audit/entries", {"decision": "maybe"}),
        ("/audit/entries/abc", {}),
        ("/audit/consistency", {"first": "5", "second": "2"}),
        ("/audit/consistency", {"first": "1", "second": "999"}),
        ("/audit/consistency", {"first": "x", "second": "2"}),
        ("/audit/export", {"start": "5", "end": "999"}),
        ("/audit/export", {"start": "-3"}),
        ("/audit/checkpoints", {"limit": "100000"}),
    ],
)
def test_bad_query_parameters_are_400_problems_not_500(
    client: TestClient, auditor: dict[str, str], path: str, params: dict[str, str]
) -> None:
    r = client.get(path, params=params, headers=auditor)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_unknown_entry_is_404(client: TestClient, auditor: dict[str, str]) -> None:
    assert client.get("/audit/entries/999", headers=auditor).status_code == 404
    assert client.get("/audit/entries/-1", headers=auditor).status_code == 404


def test_bad_citizen_paging_is_a_400(client: TestClient, issuer: DevIssuer) -> None:
    r = client.get("/me/accesses", params={"limit": "x"}, headers=_auth(issuer, ALICE, "citizen"))
    assert r.status_code == 400


def test_citizen_fetches_one_of_their_entries_with_a_proof_and_its_checkpoint(
    client: TestClient, issuer: DevIssuer, log: TransparencyLog
) -> None:
    r = client.get("/me/accesses/1", headers=_auth(issuer, ALICE, "citizen"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index"] == 1
    assert body["entry"]["subject"] == ALICE
    assert "JP/GOV/132098 (tax)" in body["text"]["en"]
    cp = verify_checkpoint(body["checkpoint"], log.verifier())
    assert body["checkpoint_time"].startswith("2026-11-24")  # the API's clock published it
    proof = [base64.b64decode(h) for h in body["inclusion_proof"]]
    assert merkle.verify_inclusion(base64.b64decode(body["leaf_hash"]), 1, cp.size, proof, cp.root)


def test_another_citizens_entry_is_the_same_404_as_an_unknown_one(
    client: TestClient, issuer: DevIssuer
) -> None:
    alice = _auth(issuer, ALICE, "citizen")
    bobs = client.get("/me/accesses/0", headers=alice)  # entry 0 is Bob's
    unknown = client.get("/me/accesses/999", headers=alice)
    negative = client.get("/me/accesses/-1", headers=alice)
    huge = client.get(f"/me/accesses/{2**64}", headers=alice)  # beyond any 64-bit SQL integer
    answers = (bobs, unknown, negative, huge)
    assert {r.status_code for r in answers} == {404}
    strip = [{k: v for k, v in r.json().items() if k != "instance"} for r in answers]
    assert strip[0] == strip[1] == strip[2] == strip[3]
    assert client.get("/me/accesses/1").status_code == 401


def test_auditor_reads_the_log_size_and_citizens_cannot(
    client: TestClient, auditor: dict[str, str], issuer: DevIssuer
) -> None:
    assert client.get("/audit/size", headers=auditor).json() == {"size": 13}
    assert client.get("/audit/size", headers=_auth(issuer, ALICE, "citizen")).status_code == 403
    entry = client.get("/audit/entries/3", headers=auditor).json()
    assert entry["checkpoint_time"].startswith("2026-11-24")


HUGE = str(2**64)
"""Larger than any 64-bit SQL integer: once an OverflowError inside SQLite, answered 500."""


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/audit/entries", {"cursor": HUGE}, 400),
        ("/audit/entries", {"cursor": str(2**63)}, 400),
        ("/audit/consistency", {"first": "0", "second": HUGE}, 400),
        ("/audit/consistency", {"first": HUGE, "second": "1"}, 400),
        ("/audit/export", {"start": HUGE}, 400),
        ("/audit/export", {"end": HUGE}, 400),
        (f"/audit/entries/{HUGE}", {}, 404),
        (f"/audit/entries/{2**63}", {}, 404),
        (f"/audit/entries/{2**63 - 1}", {}, 404),
    ],
)
def test_integers_beyond_64_bits_are_problems_never_500(
    client: TestClient, auditor: dict[str, str], path: str, params: dict[str, str], status: int
) -> None:
    r = client.get(path, params=params, headers=auditor)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("cursor", [HUGE, "99999999999999999999", str(2**63)])
def test_a_citizen_cursor_beyond_64_bits_is_a_400(
    client: TestClient, issuer: DevIssuer, cursor: str
) -> None:
    r = client.get(
        "/me/accesses", params={"cursor": cursor}, headers=_auth(issuer, ALICE, "citizen")
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_the_largest_64_bit_cursor_is_an_empty_page(
    client: TestClient, issuer: DevIssuer, auditor: dict[str, str]
) -> None:
    largest = str(2**63 - 1)
    citizen = client.get(
        "/me/accesses", params={"cursor": largest}, headers=_auth(issuer, ALICE, "citizen")
    )
    assert citizen.status_code == 200, citizen.text
    assert citizen.json()["accesses"] == []
    auditor_page = client.get("/audit/entries", params={"cursor": largest}, headers=auditor)
    assert auditor_page.status_code == 200, auditor_page.text
    assert auditor_page.json()["entries"] == []


def _whole_record(client: TestClient, headers: dict[str, str]) -> tuple[dict, list]:  # type: ignore[type-arg]
    """Every page of /me/accesses (two at a time) and the first page's completeness proof."""
    first = client.get("/me/accesses", params={"limit": 2}, headers=headers).json()
    entries = [(a["index"], a["entry"]) for a in first["accesses"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = client.get(
            "/me/accesses", params={"limit": 2, "cursor": cursor}, headers=headers
        ).json()
        assert page["completeness"] is None  # the proof comes once, with the first page
        entries += [(a["index"], a["entry"]) for a in page["accesses"]]
        cursor = page["next_cursor"]
    return first["completeness"], entries


def test_citizen_proves_their_paged_record_complete_and_a_deleted_row_breaks_it(
    client: TestClient, issuer: DevIssuer, log: TransparencyLog
) -> None:
    alice = _auth(issuer, ALICE, "citizen")
    completeness, entries = _whole_record(client, alice)
    proofs = [SubjectProof.from_json(p) for p in completeness["proofs"]]
    assert {p.subject for p in proofs} == {ALICE, f"{ALICE}-alias"}
    cp = verify_record(completeness["checkpoint"], log.verifier(), proofs, entries)
    assert cp.size == completeness["tree_size"] == 13
    with log._engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_entries WHERE idx = 4")
    completeness, entries = _whole_record(client, alice)
    proofs = [SubjectProof.from_json(p) for p in completeness["proofs"]]
    with pytest.raises(CompletenessError):
        verify_record(completeness["checkpoint"], log.verifier(), proofs, entries)


def test_every_refusal_of_the_audit_and_citizen_apis_is_recorded_once(
    log: TransparencyLog, issuer: DevIssuer
) -> None:
    """No token (401), a wrong role (403), a bad parameter (400), an entry not the caller's
    (404): each is recorded once, with the route template and code, never the request's path
    or a subject; an answered request records nothing."""
    from exchange.errors import OnceOnlyError

    log.append_many([make_event(i, subject=ALICE) for i in range(3)])
    recorded: list[tuple[int, str, str]] = []

    def refused(exc: OnceOnlyError, route: str, _request: object) -> None:
        recorded.append((exc.status, exc.code, route))

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_router(log, issuer.verifier(), clock=lambda: T0 + timedelta(days=1), refused=refused)
    )
    client = TestClient(app, raise_server_exceptions=False)
    citizen_bob = _auth(issuer, BOB, "citizen")
    assert client.get("/me/accesses").status_code == 401
    assert client.get("/audit/size", headers=citizen_bob).status_code == 403
    assert (
        client.get("/audit/entries?limit=0", headers=_auth(issuer, "a", "auditor")).status_code
        == 400
    )
    assert client.get("/me/accesses/1", headers=citizen_bob).status_code == 404
    assert client.get("/me/accesses", headers=citizen_bob).status_code == 200
    assert [(s, r) for s, _, r in recorded] == [
        (401, "GET /me/accesses"),
        (403, "GET /audit/size"),
        (400, "GET /audit/entries"),
        (404, "GET /me/accesses/{index}"),
    ]
    assert all(BOB not in r and "limit" not in r for _, _, r in recorded)
