"""Completeness proofs (issue #15, item 2): a citizen proves they were shown every entry about them.

The log is real (SQLite or PostgreSQL); each tamper edits the database directly after a checkpoint
committed to the subject map — delete a row, re-point a row's subject column, rewrite an entry's
bytes (to another subject, or in place) — and the affected citizen's proof fails while an
untouched citizen's still holds; ``audit verify`` fails on the same tampers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import timedelta

import pytest
from alembic.config import Config
from sqlalchemy import Connection, Engine, text
from sqlalchemy import inspect as sa_inspect

from audit import merkle
from audit.checkpoint import NoteSigner
from audit.completeness import (
    EMPTY,
    CompletenessError,
    Member,
    SubjectProof,
    nibble,
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
    assert "\nsubject-map-16 " in note.split("\n\n")[0]


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


def test_a_subject_with_entries_cannot_be_proven_to_have_none(log: TransparencyLog) -> None:
    """The node cannot hand a citizen an empty record: neither the path's end as it is (their
    own leaf) nor another member invented where it ends makes an empty list check."""
    note, proofs, _ = _record(log, ALICE)
    with pytest.raises(CompletenessError, match="not all the entries"):
        verify_record(note, log.verifier(), proofs, [])
    key = subject_key(log.origin, ALICE)
    depth = len(proofs[0].siblings) // 15
    for stranger_key in (key[:-1] + bytes([key[-1] ^ 1]), key):
        stranger = Member(stranger_key, 3, bytes(32))
        forged = SubjectProof(ALICE, proofs[0].siblings, stranger)
        with pytest.raises(CompletenessError):
            verify_record(note, log.verifier(), [forged], [])
    assert all(nibble(key[:-1] + bytes([key[-1] ^ 1]), d) == nibble(key, d) for d in range(depth))


def test_a_subject_without_entries_is_proven_absent_either_way(log: TransparencyLog) -> None:
    """A key with no leaf ends its path at an empty subtree or at another member's leaf (which
    the proof then shows): both check with no entries, and neither admits an entry."""
    log.append_many([make_event(SIZE + i, subject=f"ps-many-{i}") for i in range(200)])
    log.sign_checkpoint(T0 + timedelta(hours=1, minutes=30))
    seen = set()
    for n in range(200):
        note, proofs, entries = _record(log, f"ps-nobody-{n}")
        assert entries == []
        verify_record(note, log.verifier(), proofs, entries)
        seen.add(proofs[0].other is None)
        alice = log.search(EntryQuery(subjects=frozenset({ALICE})), limit=1).entries[0]
        slipped = [(alice.index, {**alice.record, "subject": f"ps-nobody-{n}"})]
        with pytest.raises(CompletenessError):
            verify_record(note, log.verifier(), proofs, slipped)
        if seen == {True, False}:
            break
    assert seen == {True, False}


def test_a_path_is_about_log16_subjects_long(log: TransparencyLog) -> None:
    """The compact 16-ary map: a path stops where its subtree holds one member, so a proof
    carries about log16(subjects) levels of 15 siblings, not one level per nibble of the key."""
    log.append_many([make_event(SIZE + i, subject=f"ps-many-{i}") for i in range(1000)])
    log.sign_checkpoint(T0 + timedelta(hours=1, minutes=30))
    _, proofs, _ = _record(log, *(f"ps-many-{i}" for i in range(50)))
    assert all(len(p.siblings) % 15 == 0 for p in proofs)
    levels = sorted(len(p.siblings) // 15 for p in proofs)
    assert 2 <= levels[len(levels) // 2] <= 4
    assert levels[-1] <= 8


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: {**p, "siblings": p["siblings"][:-1]},
        lambda p: {**p, "siblings": ["not base64!"] * len(p["siblings"])},
        lambda p: {**p, "siblings": [p["siblings"][0]] * 961},
        lambda p: {**p, "siblings": "AA=="},
        lambda p: {**p, "other": {"key": "AA==", "count": 1, "chain": "AA=="}},
        lambda p: {**p, "other": {"key": p["siblings"][0], "count": 0, "chain": p["siblings"][0]}},
        lambda p: {**p, "subject": 7},
        lambda p: [],
    ],
    ids=[
        "short",
        "not-base64",
        "longer-than-a-key",
        "not-a-list",
        "bad-member",
        "zero-count",
        "bad-subject",
        "not-an-object",
    ],
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
    """The compact 16-ary map's root computed from scratch over every member, straight from
    the format's definition (``audit.completeness``), sharing no code with
    ``audit.subject_map``."""

    def root(group: list[Member], depth: int) -> bytes:
        if not group:
            return EMPTY
        if len(group) == 1:
            return hashlib.sha256(b"\x03" + group[0].encode()).digest()
        digit = [(m.key[depth // 2] >> (4 * (1 - depth % 2))) & 15 for m in group]
        children = [[m for m, d in zip(group, digit, strict=True) if d == c] for c in range(16)]
        return hashlib.sha256(b"\x05" + b"".join(root(c, depth + 1) for c in children)).digest()

    return root(members, 0)


def test_the_signed_root_is_the_full_trees_and_no_node_is_stored(log: TransparencyLog) -> None:
    """The root each checkpoint signs is the one a full recomputation over every member gives,
    as the log grows in steps that touch many subjects and a few; only members are stored."""
    from audit.checkpoint import verify_checkpoint
    from audit.completeness import map_root_of

    for step, subjects in enumerate((300, 3)):
        start = log.size()
        log.append_many(
            [make_event(start + i, subject=f"ps-{step}-{i % subjects}") for i in range(600)]
        )
        cp = log.publish_checkpoint(T0 + timedelta(hours=3 + step))
        with log._engine.connect() as conn:
            rows = conn.execute(text("SELECT key, count, chain FROM audit_subject_members")).all()
            tables = set(sa_inspect(conn).get_table_names())
        members = [Member(bytes(k), int(c), bytes(ch)) for k, c, ch in rows]
        signed = map_root_of(verify_checkpoint(cp.note, log.verifier()))
        assert signed == _reference_root(members)
        assert "audit_subject_nodes" not in tables
    _check(log, ALICE, BOB, "ps-0-7", "ps-1-2", "ps-nobody")


def test_migration_audit_0006_recomputes_the_root_and_the_log_signs_it_again(
    db_url: str, signer: NoteSigner
) -> None:
    """A log whose map was written before audit_0006 (members with their bucket, nodes, a
    checkpoint signing the old ``subjects`` root): the migration recomputes the compact root
    from the members, and the next proof comes with a new checkpoint of the same size signing
    it; every citizen's record checks."""

    from audit.checkpoint import Checkpoint, sign_checkpoint
    from exchange.db import make_engine, upgrade

    engine = make_engine(db_url)
    try:
        _, log = _log_at_revision(engine, signer, "audit_0005")
        chains = _members_from_entries(log)
        old_root = bytes(range(32))
        old_note = sign_checkpoint(
            Checkpoint(log.origin, SIZE, log.root(), (f"subjects {_b64(old_root)}",)), signer
        )
        with engine.begin() as conn:
            for m in chains.values():
                conn.execute(
                    text(
                        "INSERT INTO audit_subject_members (log_id, key, bucket, count, chain)"
                        " VALUES ('node-a', :k, :b, :c, :ch)"
                    ),
                    {
                        "k": m.key,
                        "b": int.from_bytes(m.key[:4], "big"),
                        "c": m.count,
                        "ch": m.chain,
                    },
                )
            conn.execute(
                text("INSERT INTO audit_subject_nodes VALUES ('node-a', 1, :h)"), {"h": old_root}
            )
            conn.execute(
                text("INSERT INTO audit_subject_maps VALUES ('node-a', :s, :r)"),
                {"s": SIZE, "r": old_root},
            )
            _insert_checkpoint(conn, log, old_note)
        upgrade(engine)
        with engine.connect() as conn:
            tables = set(sa_inspect(conn).get_table_names())
            columns = {c["name"] for c in sa_inspect(conn).get_columns("audit_subject_members")}
        assert "audit_subject_nodes" not in tables
        assert "bucket" not in columns
        fresh = TransparencyLog(engine, log_id="node-a", signer=signer)
        note, _, _ = _record(fresh, ALICE)
        assert note != old_note
        assert "\nsubject-map-16 " in note
        _check(fresh, ALICE, BOB, CAROL, "ps-nobody")
        _assert_signed_root_is_the_full_trees(fresh, note)
        assert [c.size for c in fresh.checkpoints()] == [SIZE, SIZE]
    finally:
        engine.dispose()


def _members_from_entries(log: TransparencyLog) -> dict[bytes, Member]:
    """Each subject's member, by key, computed from the log's entries (the format's
    definition)."""
    from audit.completeness import ZERO_CHAIN, chain_step
    from exchange.canonical import canonical_json

    members: dict[bytes, Member] = {}
    for entry in log.search(EntryQuery(), limit=1000).entries:
        subject = entry.record.get("subject")
        if subject is None:
            continue
        key = subject_key(log.origin, subject)
        old = members.get(key, Member(key, 0, ZERO_CHAIN))
        leaf = merkle.leaf_hash(canonical_json(dict(entry.record)))
        members[key] = Member(key, old.count + 1, chain_step(old.chain, entry.index, leaf))
    return members


def _binary_root(members: list[Member]) -> bytes:
    """The binary compact map's root (``subject-map``, until ``audit_0007``), from its
    definition."""

    def bit(key: bytes, depth: int) -> int:
        return key[depth >> 3] >> (7 - (depth & 7)) & 1

    def root(group: list[Member], depth: int) -> bytes:
        if not group:
            return EMPTY
        if len(group) == 1:
            return hashlib.sha256(b"\x03" + group[0].encode()).digest()
        left = [m for m in group if not bit(m.key, depth)]
        right = [m for m in group if bit(m.key, depth)]
        return merkle.node_hash(root(left, depth + 1), root(right, depth + 1))

    return root(members, 0)


@pytest.mark.parametrize("forge", [False, True])
def test_migration_audit_0007_rebuilds_the_map_from_the_entries_and_signs_it_again(
    db_url: str, signer: NoteSigner, forge: bool
) -> None:
    """A log whose latest checkpoint signs the binary map (``subject-map``, before audit_0007):
    the migration deletes the stored map and the next proof comes with a new checkpoint of the
    same size whose 16-ary map is built from the entries; every citizen's record checks. A map
    written into the database after the upgrade (a member without one of alice's entries, and a
    root over it) is not signed over: no checkpoint of the new format signed it (found by an
    attack run on this change). Downgrading deletes the map again."""
    from alembic import command

    from audit.checkpoint import Checkpoint, sign_checkpoint
    from audit.completeness import ZERO_CHAIN, compact_root
    from exchange.db import make_engine, upgrade

    engine = make_engine(db_url)
    try:
        cfg, log = _log_at_revision(engine, signer, "audit_0006")
        members = _members_from_entries(log)
        binary = _binary_root(list(members.values()))
        old_note = sign_checkpoint(
            Checkpoint(log.origin, SIZE, log.root(), (f"subject-map {_b64(binary)}",)), signer
        )
        _store_map(engine, members.values(), binary)
        with engine.begin() as conn:
            _insert_checkpoint(conn, log, old_note)
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_subject_members")).scalar() == 0
        alice = subject_key(log.origin, ALICE)
        if forge:
            forged = dict(members)
            forged[alice] = Member(alice, members[alice].count - 1, ZERO_CHAIN)
            _store_map(engine, forged.values(), compact_root(forged.values()))
        fresh = TransparencyLog(engine, log_id="node-a", signer=signer)
        note, proofs, entries = _record(fresh, ALICE)
        assert "\nsubject-map-16 " in note
        with pytest.raises(CompletenessError, match="not all the entries"):
            verify_record(note, fresh.verifier(), proofs, entries[:-1])
        _check(fresh, ALICE, BOB, CAROL, "ps-nobody")
        _assert_signed_root_is_the_full_trees(fresh, note)
        assert [c.size for c in fresh.checkpoints()] == [SIZE, SIZE]
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "audit_0006")
            assert conn.execute(text("SELECT count(*) FROM audit_subject_maps")).scalar() == 0
    finally:
        engine.dispose()


def _log_at_revision(
    engine: Engine, signer: NoteSigner, revision: str
) -> tuple[Config, TransparencyLog]:
    """The audit tables at ``revision`` and a log of ``SIZE`` entries in them (no checkpoint)."""
    from alembic import command

    from exchange.db import alembic_config

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log = TransparencyLog(engine, log_id="node-a", signer=signer)
    log.append_many([make_event(i, subject=_subject(i)) for i in range(SIZE)])
    return cfg, log


def _insert_checkpoint(conn: Connection, log: TransparencyLog, note: str) -> None:
    """Store a checkpoint note signed outside the log (one of an earlier map format)."""
    conn.execute(
        text(
            "INSERT INTO audit_checkpoints (log_id, size, root, time_us, note)"
            " VALUES ('node-a', :s, :r, 0, :n)"
        ),
        {"s": SIZE, "r": log.root(), "n": note},
    )


def _store_map(engine: Engine, members: Iterable[Member], root: bytes) -> None:
    """Write a map into the database as an operator (or an attacker) with write access could."""
    with engine.begin() as conn:
        for m in members:
            conn.execute(
                text("INSERT INTO audit_subject_members VALUES ('node-a', :k, :c, :ch)"),
                {"k": m.key, "c": m.count, "ch": m.chain},
            )
        conn.execute(
            text("INSERT INTO audit_subject_maps VALUES ('node-a', :s, :r)"),
            {"s": SIZE, "r": root},
        )


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


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
    """Each replica keeps the tree of the map it last wrote or read; when the other replica
    moved the map on, its tree is for an older root and is brought to the stored map (by the
    members of the entries in between) before it advances the map or serves a proof."""
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


def test_threads_appending_while_another_thread_signs_keep_every_root_the_full_trees(
    log: TransparencyLog,
) -> None:
    """A checkpoint holds the checkpoint lock, not the head's (on PostgreSQL appends go on): the
    threads of one process append and remember their entries while another thread's checkpoints
    recall and forget them. Every root signed is the full tree's, and every citizen's record
    verifies at the end."""
    import threading

    errors: list[BaseException] = []
    appending = threading.Event()
    appending.set()

    def appender(t: int) -> None:
        try:
            for k in range(15):
                start = 1000 * (t + 1) + 20 * k
                log.append_many([make_event(start + i, subject=f"ps-t-{i % 9}") for i in range(20)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def signer() -> None:
        try:
            hour = 3
            while appending.is_set():
                cp = log.publish_checkpoint(T0 + timedelta(hours=hour))
                _assert_signed_root_is_the_full_trees(log, cp.note)
                hour += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(3)]
    signing = threading.Thread(target=signer)
    signing.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    appending.clear()
    signing.join(120)
    assert not errors
    cp = log.publish_checkpoint(T0 + timedelta(days=2))
    assert cp.size == SIZE + 3 * 15 * 20
    _assert_signed_root_is_the_full_trees(log, cp.note)
    _check(log, ALICE, *(f"ps-t-{i}" for i in range(9)))


def test_a_checkpoint_rolled_back_after_the_map_advanced_leaves_no_trace(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree's changes wait for the checkpoint's transaction to commit; if it rolls back,
    they are dropped: the tree stays at the stored map's root, the next checkpoint's root is
    still the full tree's, and proofs hold."""
    import audit.log

    log.append_many([make_event(SIZE + i, subject=f"ps-x-{i % 50}") for i in range(300)])

    def fail(*args: object, **kwargs: object) -> str:
        raise RuntimeError("the signer is unavailable")

    monkeypatch.setattr(audit.log, "sign_checkpoint", fail)
    with pytest.raises(RuntimeError):
        log.publish_checkpoint(T0 + timedelta(hours=3))
    monkeypatch.undo()
    tree = log._map_cache.tree
    assert tree is not None
    assert tree.size == SIZE
    log.append_many([make_event(SIZE + 300 + i, subject=f"ps-y-{i % 50}") for i in range(300)])
    cp = log.publish_checkpoint(T0 + timedelta(hours=4))
    _assert_signed_root_is_the_full_trees(log, cp.note)
    _check(log, ALICE, "ps-x-7", "ps-y-7")


def test_a_stored_map_that_does_not_lead_to_its_root_stops_the_checkpoint(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """A process without the map in memory builds the tree from the stored members and checks
    it against the stored root: an altered member is an integrity failure, not a new root
    signed over the damage."""
    _sql(
        log,
        "UPDATE audit_subject_members SET chain = :c WHERE key = :k",
        c=bytes(32),
        k=subject_key(log.origin, BOB),
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


def test_a_rewritten_member_row_stops_the_proof(log: TransparencyLog, make_log: MakeLog) -> None:
    """The tree is derived from the member rows: a process that builds it from a rewritten row
    gets a tree that does not lead to the signed root and refuses to send any proof rather than
    one that fails. The process that advanced the map serves from the tree it computed from
    the entries, which still checks."""
    key = subject_key(log.origin, ALICE)
    _sql(log, "UPDATE audit_subject_members SET count = count - 1 WHERE key = :k", k=key)
    with pytest.raises(LogIntegrityError, match="does not match the latest checkpoint"):
        _record(make_log(), BOB)
    _check(log, ALICE, BOB)


def test_a_replica_missing_an_entry_row_refuses_with_an_integrity_error(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """A replica that brings its tree to the stored map reads the entries in between from
    their bytes: a deleted row there is a log integrity failure, never another error."""
    reader = make_log()
    _check(reader, ALICE)  # its tree is now at the checkpoint's root
    start = log.size()
    log.append_many([make_event(start + i, subject=BOB) for i in range(5)])
    log.publish_checkpoint(T0 + timedelta(hours=3))
    _sql(log, "DELETE FROM audit_entries WHERE idx = :i", i=start + 2)
    with pytest.raises(LogIntegrityError):
        reader.completeness([ALICE], T0 + timedelta(hours=4))


def test_proofs_served_on_threads_while_checkpoints_advance_the_map(log: TransparencyLog) -> None:
    """Proofs are read from the tree on the API's threads while checkpoints change it: each
    proof sent leads to the root of the checkpoint sent with it."""
    import threading

    failures: list[BaseException] = []
    served: list[int] = []
    stop = threading.Event()

    def prove() -> None:
        n = 0
        while not stop.is_set():
            try:
                _check(log, f"ps-t-{n % 40}")  # proof, then entries: later ones are ignored
            except BaseException as exc:  # reported below
                failures.append(exc)
            n += 1
        served.append(n)

    threads = [threading.Thread(target=prove) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for step in range(15):
            start = log.size()
            log.append_many([make_event(start + i, subject=f"ps-t-{i % 40}") for i in range(60)])
            log.publish_checkpoint(T0 + timedelta(hours=3, minutes=step))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert sum(served) > 15
    _check(log, *(f"ps-t-{i}" for i in range(40)))


@pytest.mark.parametrize("name", ["ps-alice", "ps-nobody"])
@pytest.mark.parametrize("format_dir", ["subject-map-v1", "subject-map-v2"])
def test_a_record_kept_from_an_earlier_map_still_verifies(
    format_dir: str, name: str, tmp_path: pytest.TempPathFactory
) -> None:
    """A record file saved before ``audit_0006`` (the fixed-depth map,
    ``tests/vectors/subject-map-v1``) or before ``audit_0007`` (the binary compact map,
    ``subject-map-v2``), written by the code of that time, checks offline with today's command;
    with an entry left out, or a proof of no entries reaching an empty subtree, it does not."""
    from pathlib import Path

    from typer.testing import CliRunner

    from onceonly import cli

    vectors = Path(__file__).parent.parent / "vectors" / format_dir
    key = (vectors / "log.vkey").read_text().strip()
    record = vectors / f"record-{name}.json"
    ok = CliRunner().invoke(cli.app, ["audit", "verify-record", "--key", key, str(record)])
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.output
    data = json.loads(record.read_text())
    proof = data["completeness"]["proofs"][0]
    if data["accesses"]:
        data["accesses"] = data["accesses"][1:]
    else:  # no member where the path ends, no sibling: in neither format the signed root
        data["completeness"]["proofs"] = [{"subject": proof["subject"], "siblings": []}]
    tampered = Path(str(tmp_path)) / "tampered.json"
    tampered.write_text(json.dumps(data))
    bad = CliRunner().invoke(cli.app, ["audit", "verify-record", "--key", key, str(tampered)])
    assert bad.exit_code == 1, bad.output


def test_a_map_edited_in_the_database_is_never_signed(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """The stored map must be the one the latest checkpoint signed: a map row set to a root of
    the operator's choosing, or a member deleted with the root recomputed to match, stops the
    next checkpoint instead of being signed over (found by an attack run on this change)."""
    from audit.subject_map import SubjectTree, _read_members

    _sql(log, "UPDATE audit_subject_maps SET root = :r", r=bytes(range(32)))
    with pytest.raises(LogIntegrityError, match="not the one the latest checkpoint signed"):
        log.sign_checkpoint(T0 + timedelta(hours=3))
    _sql(log, "DELETE FROM audit_subject_members WHERE key = :k", k=subject_key(log.origin, ALICE))
    with log._engine.connect() as conn:
        root = SubjectTree.build(_read_members(conn, log.log_id, None), SIZE).root
    _sql(log, "UPDATE audit_subject_maps SET root = :r", r=root)
    for writer in (log, make_log()):
        writer.append_many([make_event(writer.size(), subject=BOB)])
        with pytest.raises(LogIntegrityError, match="not the one the latest checkpoint signed"):
            writer.publish_checkpoint(T0 + timedelta(hours=4))


def test_an_entry_rewritten_before_another_process_checkpoints_stops_the_checkpoint(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """A process that did not append the entries reads them back: their leaf hashes must lead,
    from the stored tree, to the head it signs, so a row rewritten to name someone else cannot
    move the entry between citizens' records while the signed log keeps the original."""
    i = log.size()
    log.append_many([make_event(i, subject=ALICE)])
    forged = entry_bytes(make_event(i, subject=BOB))
    _sql(
        log,
        "UPDATE audit_entries SET data = :d, leaf_hash = :h, subject = :s WHERE idx = :i",
        d=forged,
        h=merkle.leaf_hash(forged),
        s=BOB,
        i=i,
    )
    with pytest.raises(LogIntegrityError, match="not the ones the log's tree holds"):
        make_log().publish_checkpoint(T0 + timedelta(hours=3))


def test_a_deeply_nested_entry_is_a_clean_refusal(log: TransparencyLog) -> None:
    """A node can send an entry nested deeper than the canonical encoder recurses: the check
    refuses it as a ``CompletenessError`` (the portal shows "failed"), never a crash."""
    note, proofs, entries = _record(log, ALICE)
    nested: object = "x"
    for _ in range(5000):
        nested = [nested]
    index, record = entries[0]
    with pytest.raises(CompletenessError, match="not canonical JSON"):
        verify_record(note, log.verifier(), proofs, [(index, {**record, "extra": nested})])


def test_damaged_map_rows_and_notes_are_integrity_errors(
    log: TransparencyLog, make_log: MakeLog
) -> None:
    """A member row with an impossible count, or a stored checkpoint note the log key did not
    sign, is a log integrity failure on every path (a clean 503), never another exception."""
    _sql(
        log,
        "UPDATE audit_subject_members SET count = -1 WHERE key = :k",
        k=subject_key(log.origin, BOB),
    )
    with pytest.raises(LogIntegrityError):
        make_log().completeness([ALICE], T0 + timedelta(hours=2))
    _sql(log, "UPDATE audit_checkpoints SET note = :n", n="not a note\n")
    with pytest.raises(LogIntegrityError):
        make_log().completeness([ALICE], T0 + timedelta(hours=2))


def test_audit_verify_recomputes_the_subject_map_even_one_the_log_key_signed(
    log: TransparencyLog, signer: NoteSigner
) -> None:
    """The log's own key could sign a map of its holder's design that leaves a citizen out:
    ``audit verify`` recomputes every subject's chain from the entries and the map's root, and
    fails such a checkpoint; the map the log really signs verifies."""
    import base64

    from audit.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
    from audit.completeness import map_root_of
    from audit.subject_map import SubjectTree, _read_members

    cp = log.latest_checkpoint()
    assert cp is not None
    report = verify_export(cp.note, log.export(), log.vkey())
    assert report.ok
    assert any("subject map it signs is the one its entries give" in r for r in report.reasons)
    with log._engine.connect() as conn:
        members = _read_members(conn, log.log_id, None)
    without_alice = [m for m in members if m.key != subject_key(log.origin, ALICE)]
    assert (
        map_root_of(verify_checkpoint(cp.note, log.verifier()))
        == SubjectTree.build(members, SIZE).root
    )
    forged_root = SubjectTree.build(without_alice, SIZE).root
    line = f"subject-map-16 {base64.b64encode(forged_root).decode()}"
    forged = sign_checkpoint(Checkpoint(log.origin, cp.size, cp.root, (line,)), signer)
    bad = verify_export(forged, log.export(), log.vkey())
    assert not bad.ok
    assert "subject map the checkpoint signs is not the one its entries give" in bad.reasons[0]
