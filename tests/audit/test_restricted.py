"""Restricted entries (issue #15, item 3): hidden from the citizen until their release time,
committed in the log from the start, listed for auditors, then shown with proofs and covered by
the citizen's completeness proof.

A real log (SQLite or PostgreSQL) behind the real auditor and citizen API; time is the API's
injected clock, never a sleep. Tampers edit the database directly, as an operator could.
"""

from __future__ import annotations

import base64
import threading
import warnings
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from audit import merkle
from audit.api import build_router
from audit.checkpoint import verify_checkpoint
from audit.completeness import CompletenessError, SubjectProof, verify_record
from audit.log import TransparencyLog
from audit.restricted import commitment, release_extra
from audit.verify import verify_export
from exchange.canonical import canonical_json
from exchange.ports import AuditEvent
from exchange.tokens import DevIssuer, Principal
from exchange.web.problems import install_problem_handlers
from portal.app import verify_complete
from portal.ports import Caller
from portal.remote import RemoteLog
from tests.audit.audit_factories import T0, make_event
from tests.audit.test_checkpoint_order import replicas, shared_url  # noqa: F401 (fixtures)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # TestClient prefers httpx2 (not a dependency)
    from fastapi.testclient import TestClient

ALICE, BOB = "ps-alice", "ps-bob"
STATUTE = "statute:jp-criminal-procedure-code/art197-2"
DAYS = 30
HIDDEN = 6  # the restricted entry's index: after six ordinary ones
UNTIL = T0 + timedelta(minutes=HIDDEN, days=DAYS)
BEFORE, AFTER = UNTIL - timedelta(days=1), UNTIL + timedelta(hours=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _restricted(i: int, subject: str = ALICE) -> AuditEvent:
    """An entry as the nodes record an exchange under a restricted statute."""
    event = make_event(i, subject=subject, kind="response", basis=STATUTE)
    return replace(event, restricted_until=event.time + timedelta(days=DAYS))


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer.load_or_create(tmp_path, issuer="https://id.example", audience="onceonly")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + timedelta(days=1))


@pytest.fixture
def api(log: TransparencyLog, issuer: DevIssuer, clock: Clock) -> TestClient:
    log.append_many([make_event(i, subject=(ALICE, BOB)[i % 2]) for i in range(HIDDEN)])
    app = FastAPI()
    install_problem_handlers(app)

    def subjects_of(p: Principal) -> set[str]:
        return {p.subject}

    app.include_router(build_router(log, issuer.verifier(), subjects_of, clock=clock))
    return TestClient(app, raise_server_exceptions=False)


def _as(issuer: DevIssuer, sub: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(sub, roles=(role,))}"}


def _mine(api: TestClient, issuer: DevIssuer, who: str = ALICE) -> dict[str, Any]:
    r = api.get("/me/accesses", headers=_as(issuer, who, "citizen"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _shown(body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """Every entry the citizen was shown: each access, and a released entry beside its release."""
    out = [(a["index"], a["entry"]) for a in body["accesses"]]
    out += [
        (a["released"]["index"], a["released"]["entry"])
        for a in body["accesses"]
        if a.get("released")
    ]
    return out


def _check(log: TransparencyLog, body: dict[str, Any]) -> None:
    proofs = [SubjectProof.from_json(p) for p in body["completeness"]["proofs"]]
    verify_record(body["completeness"]["checkpoint"], log.verifier(), proofs, _shown(body))


def _sql(log: TransparencyLog, statement: str, **params: object) -> None:
    with log._engine.begin() as conn:
        conn.execute(text(statement), params)


def _restricted_list(api: TestClient, issuer: DevIssuer, **params: str) -> list[dict[str, Any]]:
    r = api.get("/audit/restricted", params=params, headers=_as(issuer, "a1", "auditor"))
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["entries"]
    return entries


def test_a_restricted_entry_commits_to_its_subject_and_never_names_it(
    api: TestClient, log: TransparencyLog
) -> None:
    assert log.append(_restricted(HIDDEN)) == HIDDEN
    record = log.entry(HIDDEN).record
    assert "subject" not in record
    assert record["basis"] == STATUTE
    assert record["restricted_until"] == UNTIL.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with log._engine.connect() as conn:
        column = conn.execute(
            text("SELECT subject FROM audit_entries WHERE idx = :i"), {"i": HIDDEN}
        ).scalar_one()
        subject, salt = conn.execute(
            text("SELECT subject, salt FROM audit_restricted WHERE idx = :i"), {"i": HIDDEN}
        ).one()
    assert column is None  # the search index does not know whom it is about
    assert (subject, len(salt)) == (ALICE, 32)
    assert record["subject_commitment"] == commitment(bytes(salt), ALICE)


def test_before_release_the_citizen_sees_nothing_of_it(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    before = _mine(api, issuer)
    log.append(_restricted(HIDDEN))
    clock.now = BEFORE
    after = _mine(api, issuer)
    assert [a["index"] for a in after["accesses"]] == [a["index"] for a in before["accesses"]]
    # the same proof: the subject map holds the same count and chain for Alice
    assert after["completeness"]["proofs"] == before["completeness"]["proofs"]
    assert after["completeness"]["tree_size"] == HIDDEN + 1
    _check(log, after)
    hidden = api.get(f"/me/accesses/{HIDDEN}", headers=_as(issuer, ALICE, "citizen"))
    unknown = api.get("/me/accesses/999", headers=_as(issuer, ALICE, "citizen"))
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["detail"] == unknown.json()["detail"]  # no tip-off, no oracle


def test_auditors_see_it_with_statute_and_release_date_but_never_the_subject(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer
) -> None:
    log.append(_restricted(HIDDEN))
    auditor = _as(issuer, "a1", "auditor")
    everything = api.get("/audit/entries", headers=auditor).json()["entries"]
    assert everything[HIDDEN]["entry"]["basis"] == STATUTE
    assert "subject" not in everything[HIDDEN]["entry"]
    by_alice = api.get("/audit/entries", params={"subject": ALICE}, headers=auditor).json()
    assert HIDDEN not in [e["index"] for e in by_alice["entries"]]
    listed = api.get("/audit/restricted", headers=auditor)
    assert ALICE not in listed.text
    [entry] = listed.json()["entries"]
    assert (entry["index"], entry["statute"]) == (HIDDEN, STATUTE)
    assert datetime.fromisoformat(entry["restricted_until"]) == UNTIL
    assert (entry["released_by"], entry["overdue"], entry["problem"]) == (None, False, None)


def test_an_auditor_lists_the_releases_that_are_overdue(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    log.append_many([_restricted(HIDDEN), _restricted(HIDDEN + 1, BOB)])
    log.append(replace(_restricted(HIDDEN + 2), restricted_until=AFTER + timedelta(days=9)))
    clock.now = BEFORE
    assert _restricted_list(api, issuer, overdue="true") == []
    clock.now = AFTER
    overdue = _restricted_list(api, issuer, overdue="true")
    assert [(e["index"], e["overdue"]) for e in overdue] == [(HIDDEN, True), (HIDDEN + 1, True)]
    assert log.release_due(AFTER) == [HIDDEN + 3, HIDDEN + 4]
    assert _restricted_list(api, issuer, overdue="true") == []
    listed = _restricted_list(api, issuer, limit="2")
    assert [e["released_by"] for e in listed] == [HIDDEN + 3, HIDDEN + 4]
    assert log.release_due(AFTER) == []  # released once


def test_after_release_it_is_shown_with_its_proofs_and_the_completeness_proof_covers_it(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    before = _mine(api, issuer)
    log.append(_restricted(HIDDEN))
    clock.now = AFTER
    body = _mine(api, issuer)  # the citizen's request releases what is due first
    release = HIDDEN + 1
    assert [a["index"] for a in body["accesses"]] == [
        *(a["index"] for a in before["accesses"]),
        release,
    ]
    shown = body["accesses"][-1]
    assert shown["entry"]["kind"] == "release"
    assert shown["released"]["index"] == HIDDEN
    assert shown["basis"]["law"] == STATUTE  # described as the access it records
    assert shown["organisation"].startswith("JP/GOV/132098")
    assert shown["released"]["entry"]["time"] == shown["when"]
    assert "kept from your view" in shown["text"]["en"]
    cp = verify_checkpoint(body["checkpoint"], log.verifier())
    for proven in (shown, shown["released"]):
        leaf = merkle.leaf_hash(log.entry(proven["index"]).data)
        path = [base64.b64decode(h) for h in proven["inclusion_proof"]]
        assert merkle.verify_inclusion(leaf, proven["index"], cp.size, path, cp.root)
    _check(log, body)
    # the proof covers it: the record shown without it does not check
    proofs = [SubjectProof.from_json(p) for p in body["completeness"]["proofs"]]
    without = [(i, e) for i, e in _shown(body) if i not in (HIDDEN, release)]
    with pytest.raises(CompletenessError, match="not all the entries"):
        verify_record(body["completeness"]["checkpoint"], log.verifier(), proofs, without)
    original = api.get(f"/me/accesses/{HIDDEN}", headers=_as(issuer, ALICE, "citizen"))
    assert original.status_code == 200
    assert original.json()["restriction"]["until"] == log.entry(HIDDEN).record["restricted_until"]
    bob = api.get(f"/me/accesses/{HIDDEN}", headers=_as(issuer, BOB, "citizen"))
    assert bob.status_code == 404


def test_a_record_shown_without_the_released_entry_fails_the_citizens_check(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    log.append(_restricted(HIDDEN))
    clock.now = AFTER
    body = _mine(api, issuer)
    proofs = [SubjectProof.from_json(p) for p in body["completeness"]["proofs"]]
    note = body["completeness"]["checkpoint"]
    without = [(i, e) for i, e in _shown(body) if i != HIDDEN]
    with pytest.raises(CompletenessError, match=f"releases entry {HIDDEN}, which was not shown"):
        verify_record(note, log.verifier(), proofs, without)
    unreleased = [(i, e) for i, e in _shown(body) if e["kind"] != "release"]
    with pytest.raises(CompletenessError):
        verify_record(note, log.verifier(), proofs, unreleased)


def test_audit_verify_passes_and_reports_overdue_releases(
    api: TestClient, log: TransparencyLog
) -> None:
    log.append_many([_restricted(HIDDEN), make_event(HIDDEN + 1, subject=BOB)])
    cp = log.sign_checkpoint(T0 + timedelta(days=1))
    report = verify_export(cp.note, log.export(), log.vkey(), now=AFTER)
    assert report, report.reasons
    assert report.overdue == (HIDDEN,)
    log.release_due(AFTER)
    cp = log.sign_checkpoint(AFTER)
    report = verify_export(cp.note, log.export(), log.vkey(), now=AFTER)
    assert report, report.reasons
    assert report.overdue == ()
    assert "1 restricted entries, 1 of them released" in report.reasons


TAMPERS = {
    "subject": "UPDATE audit_restricted SET subject = :v WHERE idx = :i",
    "salt": "UPDATE audit_restricted SET salt = :v WHERE idx = :i",
    "release-time": "UPDATE audit_restricted SET release_us = :v WHERE idx = :i",
}


@pytest.mark.parametrize(
    ("column", "value"),
    [("subject", BOB), ("salt", bytes(32)), ("release-time", 0)],
    ids=["subject", "salt", "release-time"],
)
def test_a_tampered_restricted_row_is_never_released_and_is_listed_overdue(
    api: TestClient,
    log: TransparencyLog,
    issuer: DevIssuer,
    clock: Clock,
    column: str,
    value: object,
) -> None:
    log.append(_restricted(HIDDEN))
    _sql(log, TAMPERS[column], v=value, i=HIDDEN)
    clock.now = AFTER
    assert log.release_due(AFTER) == []
    for who in (ALICE, BOB):
        assert all("released" not in a for a in _mine(api, issuer, who)["accesses"])
    [entry] = _restricted_list(api, issuer, overdue="true")
    assert entry["index"] == HIDDEN
    assert entry["problem"] is not None
    cp = log.sign_checkpoint(AFTER)
    assert verify_export(cp.note, log.export(), log.vkey(), now=AFTER).overdue == (HIDDEN,)


def test_a_release_to_the_wrong_citizen_fails_audit_verify_and_their_check(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    """An operator who writes the release itself, to someone the entry was not about."""
    log.append(_restricted(HIDDEN))
    with log._engine.connect() as conn:
        salt = conn.execute(text("SELECT salt FROM audit_restricted")).scalar_one()
    forged = log.append(
        AuditEvent(
            time=AFTER,
            node="JP/GOV/132098/resident-registry",
            kind="release",
            decision="info",
            subject=BOB,
            extra=release_extra(HIDDEN, merkle.leaf_hash(log.entry(HIDDEN).data), bytes(salt)),
        )
    )
    _sql(log, "UPDATE audit_restricted SET released_idx = :r WHERE idx = :i", r=forged, i=HIDDEN)
    cp = log.sign_checkpoint(AFTER)
    report = verify_export(cp.note, log.export(), log.vkey())
    assert not report
    assert report.first_bad_index == forged
    assert "not the one entry" in report.reasons[0]
    clock.now = AFTER
    with pytest.raises(CompletenessError, match=f"entry {forged}: its subject"):
        _check(log, _mine(api, issuer, BOB))


def test_a_rewritten_release_entry_fails_the_citizens_check_and_audit_verify(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    log.append(_restricted(HIDDEN))
    [release] = log.release_due(AFTER)
    cp = log.sign_checkpoint(AFTER)
    record = log.entry(release).record
    record["extra"]["releases"] = "0"  # point it at an ordinary entry of Alice's
    data = canonical_json(record)
    _sql(
        log,
        "UPDATE audit_entries SET data = :d, leaf_hash = :h WHERE idx = :i",
        d=data,
        h=merkle.leaf_hash(data),
        i=release,
    )
    assert not verify_export(cp.note, log.export(), log.vkey())
    clock.now = AFTER
    with pytest.raises(CompletenessError):
        _check(log, _mine(api, issuer))


def test_the_portal_reads_a_released_entry_over_http_and_proves_the_record_complete(
    api: TestClient, log: TransparencyLog, issuer: DevIssuer, clock: Clock
) -> None:
    """``portal.remote`` (what ``onceonly portal`` uses) against the real citizen API."""
    log.append(_restricted(HIDDEN))
    clock.now = AFTER
    caller = Caller(
        Principal(ALICE, frozenset({"citizen"})), issuer.issue(ALICE, roles=("citizen",))
    )
    remote = RemoteLog(api, str(api.base_url), log.verifier())
    mine = remote.my_record(caller, limit=100)
    assert {r.index for r in mine.records} >= {HIDDEN, HIDDEN + 1}
    assert verify_complete("node", mine, log.verifier()).status == "ok"


def test_replicas_releasing_at_once_release_each_entry_exactly_once(
    replicas: list[TransparencyLog],  # noqa: F811 (the fixture)
) -> None:
    replicas[0].append_many([_restricted(i, f"ps-{i}") for i in range(50)])
    start = threading.Barrier(len(replicas))
    done: list[list[int]] = []
    errors: list[BaseException] = []

    def replica(log: TransparencyLog) -> None:
        try:
            start.wait()
            done.append(log.release_due(AFTER + timedelta(minutes=50)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(log,)) for log in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i for batch in done for i in batch) == list(range(50, 100))
    log = replicas[0]
    cp = log.sign_checkpoint(AFTER + timedelta(hours=1))
    report = verify_export(cp.note, log.export(), log.vkey(), now=AFTER + timedelta(hours=1))
    assert report, report.reasons
    assert "50 restricted entries, 50 of them released" in report.reasons
