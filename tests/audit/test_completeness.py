"""Completeness proofs (issue #15, item 2): a citizen proves they were shown every entry about them.

The log is real (SQLite or PostgreSQL); each tamper edits the database directly after a checkpoint
committed to the subject map — delete a row, re-point a row's subject column, rewrite an entry's
bytes (to another subject, or in place) — and the affected citizen's proof fails while an
untouched citizen's still holds; ``audit verify`` fails on the same tampers.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import text

from audit import merkle
from audit.checkpoint import NoteSigner
from audit.completeness import (
    MAP_DEPTH,
    CompletenessError,
    Member,
    SubjectProof,
    bucket_of,
    subject_key,
    verify_record,
)
from audit.log import EntryQuery, LogIntegrityError, TransparencyLog, entry_bytes
from audit.verify import verify_export
from tests.audit.audit_factories import T0, make_event
from tests.audit.conftest import MakeLog

ALICE, BOB, CAROL = "ps-alice", "ps-bob", "ps-carol"
SIZE = 30


def _subject(i: int) -> str | None:
    return (ALICE, BOB, CAROL, None)[i % 4]


@pytest.fixture
def log(log: TransparencyLog) -> TransparencyLog:
    log.append_many([make_event(i, subject=_subject(i)) for i in range(SIZE)])
    log.sign_checkpoint(T0 + timedelta(hours=1))
    return log


def _record(log: TransparencyLog, *subjects: str) -> tuple[str, list[SubjectProof], list]:  # type: ignore[type-arg]
    """What the citizen API hands out: the proofs, then every entry the search finds."""
    cp, proofs = log.completeness(subjects, T0 + timedelta(hours=2))
    page = log.search(EntryQuery(subjects=frozenset(subjects)), limit=1000)
    return cp.note, proofs, [(e.index, e.record) for e in page.entries]


def _check(log: TransparencyLog, *subjects: str) -> None:
    note, proofs, entries = _record(log, *subjects)
    verify_record(note, log.verifier(), proofs, entries)


def _sql(log: TransparencyLog, statement: str, **params: object) -> None:
    with log._engine.begin() as conn:
        conn.execute(text(statement), params)


def _alice_index() -> int:
    return 8  # 8 % 4 == 0: about ps-alice


def test_an_untouched_log_proves_every_citizen_complete(log: TransparencyLog) -> None:
    _check(log, ALICE)
    _check(log, BOB, CAROL)
    _check(log, "ps-nobody")  # no entries: the proof shows the slot is empty


def test_the_checkpoint_signs_the_subject_map(log: TransparencyLog) -> None:
    note, _, _ = _record(log, ALICE)
    assert "\nsubjects " in note.split("\n\n")[0]


def test_proofs_follow_the_log_as_it_grows(log: TransparencyLog) -> None:
    log.append_many([make_event(SIZE + i, subject=ALICE) for i in range(5)])
    note, proofs, entries = _record(log, ALICE)
    assert len(entries) == SIZE // 4 + 1 + 5
    verify_record(note, log.verifier(), proofs, entries)


def test_a_hidden_entry_fails_the_proof(log: TransparencyLog) -> None:
    note, proofs, entries = _record(log, ALICE)
    with pytest.raises(CompletenessError, match="not all the entries"):
        verify_record(note, log.verifier(), proofs, entries[:-1])


def test_an_entry_about_someone_else_cannot_be_slipped_in(log: TransparencyLog) -> None:
    note, proofs, entries = _record(log, ALICE)
    bob = log.search(EntryQuery(subjects=frozenset({BOB})), limit=1).entries[0]
    with pytest.raises(CompletenessError, match="not about any of the subjects"):
        verify_record(note, log.verifier(), proofs, [*entries, (bob.index, bob.record)])


def test_a_deleted_row_fails_the_citizens_proof_and_audit_verify(log: TransparencyLog) -> None:
    cp = log.latest_checkpoint()
    assert cp is not None
    _sql(log, "DELETE FROM audit_entries WHERE idx = :i", i=_alice_index())
    with pytest.raises(CompletenessError):
        _check(log, ALICE)
    _check(log, BOB)
    assert not verify_export(cp.note, log.export(), log.vkey())


def test_a_re_pointed_subject_column_fails_the_citizens_proof_and_audit_verify(
    log: TransparencyLog,
) -> None:
    cp = log.latest_checkpoint()
    assert cp is not None
    _sql(log, "UPDATE audit_entries SET subject = :s WHERE idx = :i", s=BOB, i=_alice_index())
    with pytest.raises(CompletenessError):
        _check(log, ALICE)
    with pytest.raises(LogIntegrityError, match=f"entry {_alice_index()}"):
        _check(log, BOB)
    assert not verify_export(cp.note, log.export(), log.vkey())


@pytest.mark.parametrize("to", [BOB, ALICE], ids=["to-another-subject", "in-place"])
def test_a_rewritten_entry_fails_the_proofs_and_audit_verify(log: TransparencyLog, to: str) -> None:
    cp = log.latest_checkpoint()
    assert cp is not None
    i = _alice_index()
    forged = entry_bytes(make_event(i, subject=to, client="JP/GOV/000000/forged"))
    _sql(
        log,
        "UPDATE audit_entries SET data = :d, leaf_hash = :h, subject = :s, client = :c "
        "WHERE idx = :i",
        d=forged,
        h=merkle.leaf_hash(forged),
        s=to,
        c="JP/GOV/000000/forged",
        i=i,
    )
    with pytest.raises(CompletenessError):
        _check(log, to)
    assert not verify_export(cp.note, log.export(), log.vkey())


def test_a_proof_under_another_log_key_is_refused(log: TransparencyLog) -> None:
    note, proofs, entries = _record(log, ALICE)
    other = NoteSigner.generate(log.origin).verifier()
    with pytest.raises(CompletenessError, match="pinned log key"):
        verify_record(note, other, proofs, entries)


def test_a_proof_with_an_invented_bucket_member_is_refused(log: TransparencyLog) -> None:
    note, proofs, entries = _record(log, ALICE)
    key = subject_key(log.origin, ALICE)
    stranger = Member(key[:4] + bytes(28), 3, bytes(32))
    assert bucket_of(stranger.key) == bucket_of(key)
    forged = SubjectProof(ALICE, (*proofs[0].others, stranger), proofs[0].siblings)
    with pytest.raises(CompletenessError):
        verify_record(note, log.verifier(), [forged], entries)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: {**p, "siblings": p["siblings"][:-1]},
        lambda p: {**p, "siblings": ["not base64!"] * MAP_DEPTH},
        lambda p: {**p, "others": [{"key": "AA==", "count": 1, "chain": "AA=="}]},
        lambda p: {**p, "subject": 7},
        lambda p: [],
    ],
    ids=["short", "not-base64", "bad-member", "bad-subject", "not-an-object"],
)
def test_a_malformed_proof_is_a_clean_refusal(log: TransparencyLog, mangle: object) -> None:
    note, proofs, entries = _record(log, ALICE)
    mangled = mangle(json.loads(json.dumps(proofs[0].to_json())))  # type: ignore[operator]

    def parse_and_verify() -> None:
        verify_record(note, log.verifier(), [SubjectProof.from_json(mangled)], entries)

    with pytest.raises(CompletenessError):
        parse_and_verify()


def test_the_map_holds_no_pseudonym(log: TransparencyLog) -> None:
    with log._engine.connect() as conn:
        rows = conn.execute(text("SELECT key FROM audit_subject_members")).all()
    assert len(rows) == 3
    assert all(ALICE.encode() not in bytes(r[0]) for r in rows)


def _reference_root(members: list[Member]) -> bytes:
    """The map root computed from scratch over every member (no stored node used)."""
    from audit.completeness import bucket_hash, empty_hashes

    empty = empty_hashes()
    by_bucket: dict[int, list[Member]] = {}
    for m in members:
        by_bucket.setdefault(bucket_of(m.key), []).append(m)
    level = {(1 << MAP_DEPTH) + b: bucket_hash(ms) for b, ms in by_bucket.items()}
    for height in range(MAP_DEPTH):
        level = {
            p: merkle.node_hash(
                level.get(2 * p, empty[height]), level.get(2 * p + 1, empty[height])
            )
            for p in {n >> 1 for n in level}
        }
    return level[1]


def test_only_every_stratum_height_is_stored_and_the_root_is_the_full_trees(
    log: TransparencyLog,
) -> None:
    """The map stores nodes at heights 8, 16, 24 and 32 only (``STRATUM``; bucket hashes come
    from the members); the root it
    signs is the one a full recomputation over every member gives, as the log grows in steps
    that touch shared groups (many subjects) and sparse ones (a few)."""
    from audit.checkpoint import verify_checkpoint
    from audit.completeness import map_root_of
    from audit.subject_map import STRATUM

    for step, subjects in enumerate((300, 3)):
        start = log.size()
        log.append_many(
            [make_event(start + i, subject=f"ps-{step}-{i % subjects}") for i in range(600)]
        )
        cp = log.publish_checkpoint(T0 + timedelta(hours=3 + step))
        with log._engine.connect() as conn:
            rows = conn.execute(text("SELECT key, count, chain FROM audit_subject_members")).all()
            nodes = [
                int(r[0]) for r in conn.execute(text("SELECT node_id FROM audit_subject_nodes"))
            ]
        members = [Member(bytes(k), int(c), bytes(ch)) for k, c, ch in rows]
        signed = map_root_of(verify_checkpoint(cp.note, log.verifier()))
        assert signed == _reference_root(members)
        assert {MAP_DEPTH + 1 - n.bit_length() for n in nodes} <= set(
            range(STRATUM, MAP_DEPTH + 1, STRATUM)
        )
    _check(log, ALICE, BOB, "ps-0-7", "ps-1-2", "ps-nobody")


def test_migrations_audit_0004_0005_drop_the_unstored_heights_and_proofs_still_hold(
    db_url: str, signer: NoteSigner
) -> None:
    """A map written with every height (the layout before audit_0004, bucket hashes included
    until audit_0005) is migrated to the strata layout: the other heights and the buckets are
    gone, the signed root and every proof are unchanged."""
    from alembic import command

    from exchange.db import alembic_config, make_engine, upgrade

    engine = make_engine(db_url)
    try:
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "audit_0003")
        log = TransparencyLog(engine, log_id="node-a", signer=signer)
        log.append_many([make_event(i, subject=_subject(i)) for i in range(SIZE)])
        log.sign_checkpoint(T0 + timedelta(hours=1))
        with engine.begin() as conn:  # the old layout stored every node on every path
            rows = conn.execute(text("SELECT key, count, chain FROM audit_subject_members")).all()
            members = [Member(bytes(k), int(c), bytes(ch)) for k, c, ch in rows]
            stored = {
                int(r[0]) for r in conn.execute(text("SELECT node_id FROM audit_subject_nodes"))
            }
            extra = {
                ((1 << MAP_DEPTH) + bucket_of(m.key)) >> h
                for m in members
                for h in range(MAP_DEPTH)
            } - stored
            for node in sorted(extra):
                conn.execute(
                    text(
                        "INSERT INTO audit_subject_nodes (log_id, node_id, hash) VALUES (:l, :n, :h)"
                    ),
                    {"l": "node-a", "n": node, "h": bytes(32)},
                )
        upgrade(engine)
        with engine.connect() as conn:
            after = {
                int(r[0]) for r in conn.execute(text("SELECT node_id FROM audit_subject_nodes"))
            }
        assert 0 in {MAP_DEPTH + 1 - n.bit_length() for n in extra}  # bucket hashes too
        assert after == stored
        _check(log, ALICE, BOB, CAROL)
    finally:
        engine.dispose()


def _assert_signed_root_is_the_full_trees(log: TransparencyLog, note: str) -> None:
    from audit.checkpoint import verify_checkpoint
    from audit.completeness import map_root_of

    with log._engine.connect() as conn:
        rows = conn.execute(text("SELECT key, count, chain FROM audit_subject_members")).all()
    members = [Member(bytes(k), int(c), bytes(ch)) for k, c, ch in rows]
    assert map_root_of(verify_checkpoint(note, log.verifier())) == _reference_root(members)


def test_replicas_sharing_the_database_each_keep_a_correct_map(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """Each replica keeps the upper tree of the map it last wrote; when the other replica moved
    the map on, its tree is for an older root and is rebuilt, never used, and its proofs read the
    groups from the database until it holds the current tree again."""
    other = make_log()
    for step, writer in enumerate((other, log, log, other)):
        start = writer.size()
        writer.append_many(
            [make_event(start + i, subject=f"ps-{step}-{i % 40}") for i in range(200)]
        )
        cp = writer.publish_checkpoint(T0 + timedelta(hours=3 + step))
        _assert_signed_root_is_the_full_trees(writer, cp.note)
        for reader in (log, other):
            note, proofs, entries = _record(reader, ALICE, f"ps-{step}-3")
            verify_record(note, reader.verifier(), proofs, entries)


def test_a_checkpoint_rolled_back_after_the_map_advanced_leaves_no_trace(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new upper tree is cached before the checkpoint's transaction commits; if it rolls
    back, the stored map keeps its old root and the cached tree is for a root never signed:
    the next checkpoint's root is still the full tree's, and proofs hold."""
    import audit.log

    log.append_many([make_event(SIZE + i, subject=f"ps-x-{i % 50}") for i in range(300)])

    def fail(*args: object, **kwargs: object) -> str:
        raise RuntimeError("the signer is unavailable")

    monkeypatch.setattr(audit.log, "sign_checkpoint", fail)
    with pytest.raises(RuntimeError):
        log.publish_checkpoint(T0 + timedelta(hours=3))
    monkeypatch.undo()
    assert log._map_cache.tree is not None  # the tree of the rolled-back map, left behind
    log.append_many([make_event(SIZE + 300 + i, subject=f"ps-y-{i % 50}") for i in range(300)])
    cp = log.publish_checkpoint(T0 + timedelta(hours=4))
    _assert_signed_root_is_the_full_trees(log, cp.note)
    _check(log, ALICE, "ps-x-7", "ps-y-7")


def test_a_stored_map_that_does_not_lead_to_its_root_stops_the_checkpoint(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """A process without the map in memory rebuilds the upper tree from the stored nodes and
    checks it against the stored root: an altered node is an integrity failure, not a new root
    signed over the damage."""
    _sql(
        log,
        "UPDATE audit_subject_nodes SET hash = :h WHERE node_id = ("
        "SELECT min(node_id) FROM audit_subject_nodes WHERE node_id >= 65536 AND node_id < 131072)",
        h=bytes(32),
    )
    fresh = make_log()
    fresh.append_many([make_event(SIZE + i, subject=ALICE) for i in range(3)])
    with pytest.raises(LogIntegrityError, match="does not lead to its root"):
        fresh.publish_checkpoint(T0 + timedelta(hours=3))


def test_a_checkpoint_over_entries_another_replica_appended_reads_them_back(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """A checkpoint takes the entries this process appended from memory and reads back the
    ones another replica appended in between: the root is the full tree's either way."""
    other = make_log()
    for writer in (log, other, log):
        start = writer.size()
        writer.append_many([make_event(start + i, subject=f"ps-m-{i % 30}") for i in range(100)])
    cp = log.publish_checkpoint(T0 + timedelta(hours=3))
    _assert_signed_root_is_the_full_trees(log, cp.note)
    _check(log, ALICE, "ps-m-7")
    _check(other, "ps-m-8")


def test_an_entry_rewritten_before_the_checkpoint_still_fails_the_citizens_proof(
    log: TransparencyLog,
) -> None:
    """The map follows the bytes this process appended even if the row is rewritten before the
    checkpoint is signed: the citizen is shown the rewritten entry, whose leaf hash the map does
    not hold, and their proof fails (as ``audit verify`` does)."""
    i = log.size()
    log.append_many([make_event(i, subject=ALICE)])
    forged = entry_bytes(make_event(i, subject=ALICE, client="JP/GOV/000000/forged"))
    _sql(
        log,
        "UPDATE audit_entries SET data = :d, leaf_hash = :h, client = :c WHERE idx = :i",
        d=forged,
        h=merkle.leaf_hash(forged),
        c="JP/GOV/000000/forged",
        i=i,
    )
    cp = log.publish_checkpoint(T0 + timedelta(hours=3))
    with pytest.raises(CompletenessError):
        _check(log, ALICE)
    _check(log, BOB)
    assert not verify_export(cp.note, log.export(), log.vkey())


def test_a_rewritten_member_row_stops_the_proof(log: TransparencyLog) -> None:
    """Bucket hashes are not stored: they come from the member rows, so a member row rewritten
    in the database gives a bucket that does not lead to the signed root, and the node refuses
    to send the proof rather than send one that fails."""
    key = subject_key(log.origin, ALICE)
    _sql(log, "UPDATE audit_subject_members SET count = count - 1 WHERE key = :k", k=key)
    with pytest.raises(LogIntegrityError, match="does not match the latest checkpoint"):
        _record(log, ALICE)
    _check(log, BOB)
