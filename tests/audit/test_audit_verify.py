"""The offline verifier against real exports, and tamper tests that edit the database directly:
change, drop, reorder or insert one stored entry and the verifier fails and names it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from audit import merkle
from audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from audit.log import TransparencyLog, entry_bytes, entry_record
from audit.store import node_key
from audit.verify import _canonical, verify_export
from exchange.canonical import canonical_json
from tests.audit.audit_factories import T0, make_event

SIZE = 20
BAD = 11


@pytest.fixture
def filled(log: TransparencyLog) -> tuple[TransparencyLog, str]:
    log.append_many([make_event(i, subject=f"ps-{i % 4}") for i in range(SIZE)])
    return log, log.sign_checkpoint(T0 + timedelta(hours=1)).note


def _engine(log: TransparencyLog) -> Engine:
    return log._engine


def _sql(log: TransparencyLog, statement: str, **params: object) -> None:
    with _engine(log).begin() as conn:
        conn.execute(text(statement), params)


def test_an_untampered_export_verifies(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    report = verify_export(note, log.export(), log.vkey())
    assert report.ok
    assert report.first_bad_index is None
    assert report.checkpoint is not None
    assert report.checkpoint.size == SIZE


def test_changed_entry_is_named(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    forged = entry_bytes(make_event(BAD, subject="ps-someone-else"))
    _sql(
        log,
        "UPDATE audit_entries SET data = :d, leaf_hash = :h, subject = 'ps-someone-else' "
        "WHERE idx = :i",
        d=forged,
        h=merkle.leaf_hash(forged),
        i=BAD,
    )
    report = verify_export(note, log.export(), log.vkey())
    assert not report
    assert report.first_bad_index == BAD
    assert f"entry {BAD}" in report.reasons[0]


def test_dropped_entry_is_named(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    _sql(log, "DELETE FROM audit_entries WHERE idx = :i", i=BAD)
    report = verify_export(note, log.export(), log.vkey())
    assert not report
    assert report.first_bad_index == BAD
    assert "missing" in report.reasons[0]


def test_dropped_last_entry_is_named(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    _sql(log, "DELETE FROM audit_entries WHERE idx = :i", i=SIZE - 1)
    report = verify_export(note, log.export(0, SIZE), log.vkey())
    assert not report
    assert report.first_bad_index == SIZE - 1


def test_reordered_entries_are_named(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    _sql(log, "UPDATE audit_entries SET idx = -1 WHERE idx = :i", i=BAD)
    _sql(log, "UPDATE audit_entries SET idx = :i WHERE idx = :j", i=BAD, j=BAD + 1)
    _sql(log, "UPDATE audit_entries SET idx = :j WHERE idx = -1", j=BAD + 1)
    report = verify_export(note, log.export(), log.vkey())
    assert not report
    assert report.first_bad_index == BAD


def test_inserted_entry_is_named(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    _sql(log, "UPDATE audit_entries SET idx = idx + 1000 WHERE idx >= :i", i=BAD)
    _sql(log, "UPDATE audit_entries SET idx = idx - 999 WHERE idx >= 1000")
    forged = entry_bytes(make_event(500, subject="ps-0"))
    _sql(
        log,
        "INSERT INTO audit_entries (log_id, idx, data, leaf_hash, time_us, node, kind, decision) "
        "VALUES ('node-a', :i, :d, :h, 0, 'n', 'request', 'allow')",
        i=BAD,
        d=forged,
        h=merkle.leaf_hash(forged),
    )
    report = verify_export(note, log.export(0, SIZE + 1), log.vkey())
    assert not report
    assert report.first_bad_index == BAD


def test_rewriting_the_stored_tree_too_still_fails(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    forged = entry_bytes(make_event(BAD, purpose="something-else"))
    _sql(log, "UPDATE audit_entries SET data = :d WHERE idx = :i", d=forged, i=BAD)
    _sql(
        log,
        "UPDATE audit_nodes SET hash = :h WHERE node_key = :k",
        h=merkle.leaf_hash(forged),
        k=node_key(0, BAD),
    )
    report = verify_export(note, log.export(), log.vkey())
    assert not report
    assert "do not hash to the checkpoint" in report.reasons[0]


def test_checkpoint_from_another_key_is_rejected(filled: tuple[TransparencyLog, str]) -> None:
    log, _ = filled
    impostor = NoteSigner.generate(log.origin)
    forged = sign_checkpoint(Checkpoint(log.origin, SIZE, log.root()), impostor)
    report = verify_export(forged, log.export(), log.vkey())
    assert not report
    assert "checkpoint rejected" in report.reasons[0]


def test_export_shorter_than_the_checkpoint_names_the_first_missing_entry(
    filled: tuple[TransparencyLog, str],
) -> None:
    log, note = filled
    report = verify_export(note, log.export(0, 15), log.vkey())
    assert not report
    assert report.first_bad_index == 15


def test_entries_after_the_checkpoint_are_reported_as_not_covered(
    filled: tuple[TransparencyLog, str],
) -> None:
    log, note = filled
    log.append_many([make_event(100 + i) for i in range(3)])
    report = verify_export(note, log.export(), log.vkey())
    assert report
    assert "3 later entries are not covered" in report.reasons[-1]


def test_consistent_earlier_checkpoint_is_accepted(filled: tuple[TransparencyLog, str]) -> None:
    log, earlier = filled
    log.append_many([make_event(100 + i) for i in range(7)])
    later = log.sign_checkpoint(T0 + timedelta(hours=2)).note
    report = verify_export(later, log.export(), log.vkey(), earlier_checkpoint=earlier)
    assert report, report.reasons
    assert "consistent with the earlier checkpoint of size 20" in report.reasons


def test_a_forked_history_is_caught_by_the_earlier_checkpoint(
    make_log: object, signer: NoteSigner
) -> None:
    assert callable(make_log)
    honest, fork = make_log(log_id="node-a"), make_log(log_id="node-a-fork")
    honest.append_many([make_event(i) for i in range(10)])
    fork.append_many([make_event(i, purpose="rewritten") for i in range(10)])
    earlier = fork.sign_checkpoint(T0).note  # the operator showed this one to the auditor
    honest.append_many([make_event(100 + i) for i in range(5)])
    later = honest.sign_checkpoint(T0 + timedelta(hours=1)).note
    report = verify_export(later, honest.export(), signer.vkey(), earlier_checkpoint=earlier)
    assert not report
    assert "history was rewritten" in report.reasons[0]


def test_garbage_lines_and_bad_keys_give_a_report_not_an_exception(
    filled: tuple[TransparencyLog, str],
) -> None:
    log, note = filled
    lines = list(log.export())
    lines[3] = "{not json"
    report = verify_export(note, lines, log.vkey())
    assert not report
    assert report.first_bad_index == 3
    assert not verify_export(note, lines, "not a key")
    assert not verify_export("garbage", lines, log.vkey())


def test_verifier_fast_serialisation_is_exactly_rfc8785_for_entries() -> None:
    samples = [
        {"purpose": "転居届", "reason": 'tab\tquote"back\\slash\x01\x7f\u2028', "status": 403},
        {"extra": {"z": "1", "a": "😀", "B": ""}, "kind": "request", "n": -0},
        entry_record(make_event(3)),
    ]
    for value in samples:
        assert _canonical(value) == canonical_json(value)


def test_a_reformatted_export_still_verifies(filled: tuple[TransparencyLog, str]) -> None:
    log, note = filled
    pretty = [json.dumps(json.loads(line), indent=1).replace("\n", "") for line in log.export()]
    report = verify_export(note, pretty, log.vkey())
    assert report, report.reasons


def test_an_entry_edited_to_bytes_that_are_not_utf8_is_exported_and_named(
    filled: tuple[TransparencyLog, str],
) -> None:
    """The database formats export lines; one it cannot (bytes that are not UTF-8) is formatted
    in Python instead, so the edited entry is still exported, and named by the verifier."""
    log, note = filled
    edited = entry_bytes(make_event(BAD)).replace(b"tax-assessment", b"tax-\xff-assessment")
    _sql(log, "UPDATE audit_entries SET data = :d WHERE idx = :i", d=edited, i=BAD)
    lines = list(log.export())
    assert len(lines) == SIZE
    assert "tax-\ufffd-assessment" in lines[BAD]
    report = verify_export(note, lines, log.vkey())
    assert not report
    assert report.first_bad_index == BAD
    assert f"entry {BAD} was altered" in report.reasons[0]
