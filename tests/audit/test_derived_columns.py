"""Search columns are derived from the signed entry bytes, never trusted (issue #15, item 1).

Each test rewrites one search column of one stored entry straight in the database — the attack
that hid an entry from its citizen while every proof still checked — and shows that the offline
verifier names the entry and that no search or API answers from the rewritten row.
"""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from audit.api import build_router
from audit.columns import (
    INDEX_COLUMNS,
    column_mismatch,
    columns_json,
    implied_columns,
    index_columns,
)
from audit.log import EntryQuery, LogIntegrityError, TransparencyLog, entry_record
from audit.verify import verify_export
from exchange.tokens import DevIssuer
from exchange.web.problems import install_problem_handlers
from tests.audit.audit_factories import T0, make_event

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

SIZE = 12
BAD = 7  # an entry about ps-alice (odd indices)


@pytest.fixture
def filled(log: TransparencyLog) -> tuple[TransparencyLog, str]:
    log.append_many([make_event(i, subject="ps-alice" if i % 2 else "ps-bob") for i in range(SIZE)])
    return log, log.sign_checkpoint(T0 + timedelta(hours=1)).note


def _set(log: TransparencyLog, column: str, value: object, idx: int = BAD) -> None:
    assert column in INDEX_COLUMNS  # a fixed name, never caller input
    with log._engine.begin() as conn:
        conn.execute(
            text(f"UPDATE audit_entries SET {column} = :v WHERE idx = :i"),  # noqa: S608
            {"v": value, "i": idx},
        )


def test_columns_are_those_of_the_entry_record() -> None:
    event = make_event(3, subject="ps-alice", consent_id="c-1")
    record = entry_record(event)
    columns = index_columns(record)
    assert dict(zip(INDEX_COLUMNS, columns, strict=True))["subject"] == "ps-alice"
    assert column_mismatch(record, columns) is None
    assert column_mismatch(record, (columns[0] + 1, *columns[1:])) == "time_us"


@pytest.mark.parametrize(
    "record",
    [
        entry_record(make_event(3, subject="ps-alice", consent_id="c-1")),
        {"time": "not a time", "subject": 7, "client": None, "kind": ["x"], "node": "n"},
        {"time": "2026-11-23T00:00:00+09:00"},
        {},
    ],
)
def test_the_verifiers_one_pass_columns_are_index_columns(record: dict[str, object]) -> None:
    assert list(implied_columns(record).items()) == list(
        columns_json(index_columns(record)).items()
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("subject", "ps-someone-else"),
        ("subject", None),
        ("client", "JP/GOV/000000/nobody"),
        ("decision", "deny"),
        ("time_us", 0),
        ("consent_id", "c-forged"),
    ],
)
def test_a_rewritten_column_fails_offline_verification_naming_the_entry(
    filled: tuple[TransparencyLog, str], column: str, value: object
) -> None:
    log, note = filled
    assert verify_export(note, log.export(), log.vkey())
    _set(log, column, value)
    report = verify_export(note, log.export(), log.vkey())
    assert not report
    assert report.first_bad_index == BAD
    assert report.reasons == (
        f"entry {BAD}: its stored {column} is not the one its signed bytes hold",
    )


def test_a_re_pointed_entry_is_never_answered_by_a_search(
    filled: tuple[TransparencyLog, str],
) -> None:
    log, _ = filled
    _set(log, "subject", "ps-bob")
    # The citizen it was moved to: the search finds the row and refuses to answer from it.
    with pytest.raises(LogIntegrityError, match=f"entry {BAD}: its stored subject"):
        log.search(EntryQuery(subjects=frozenset({"ps-bob"})))
    with pytest.raises(LogIntegrityError, match=f"entry {BAD}"):
        log.entry(BAD)


def test_an_export_without_columns_still_verifies_and_says_they_were_not_checked(
    filled: tuple[TransparencyLog, str],
) -> None:
    log, note = filled
    bare = []
    for line in log.export():
        obj = json.loads(line)
        del obj["columns"]
        bare.append(json.dumps(obj))
    report = verify_export(note, bare, log.vkey())
    assert report
    assert f"{SIZE} entries carried no search columns: those were not checked" in report.reasons


def test_the_citizen_api_answers_a_re_pointed_entry_with_an_integrity_problem(
    filled: tuple[TransparencyLog, str], tmp_path: Path
) -> None:
    log, _ = filled
    issuer = DevIssuer.load_or_create(tmp_path, issuer="https://id.example", audience="onceonly")
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(build_router(log, issuer.verifier(), clock=lambda: T0 + timedelta(days=1)))
    client = TestClient(app, raise_server_exceptions=False)
    bob = {"Authorization": f"Bearer {issuer.issue('ps-bob', roles=('citizen',))}"}
    assert client.get("/me/accesses", headers=bob).status_code == 200
    _set(log, "subject", "ps-bob")
    r = client.get("/me/accesses", headers=bob)
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["code"] == "Server.Audit.Integrity"
    assert f"entry {BAD}" in problem["detail"]
