"""The stored log: proofs from stored nodes equal the in-memory reference, search, export,
checkpoints, and appends that stay ordered under concurrency and crashes."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from audit import merkle
from audit.checkpoint import NoteSigner, verify_checkpoint
from audit.log import EntryQuery, TransparencyLog, entry_bytes
from audit.store import NodeRow
from audit.verify import verify_export
from exchange.errors import ClientError, NotFoundError
from exchange.ports import AuditEvent
from tests.audit.audit_factories import T0, make_event

WRITER = Path(__file__).parent / "audit_writer.py"
REPO = Path(__file__).parents[2]


def _entries(log: TransparencyLog) -> list[bytes]:
    return [log.entry(i).data for i in range(log.size())]


def _assert_log_verifies(log: TransparencyLog) -> None:
    from datetime import UTC, datetime

    datas = _entries(log)
    assert log.root() == merkle.root_hash(datas)
    cp = log.sign_checkpoint(datetime.now(UTC))
    report = verify_export(cp.note, log.export(), log.vkey())
    assert report, report.reasons
    assert report.entries == len(datas)


def test_stored_roots_and_proofs_equal_the_in_memory_reference_at_every_size(
    log: TransparencyLog,
) -> None:
    events = [make_event(i, subject=f"ps-{i % 3}") for i in range(23)]
    for e in events[:6]:
        log.append(e)
    assert log.append_many(events[6:]) == list(range(6, 23))
    datas = [entry_bytes(e) for e in events]
    assert _entries(log) == datas
    for n in range(0, 24):
        assert log.root(n) == merkle.root_hash(datas[:n])
        for i in range(n):
            assert log.inclusion_proof(i, n) == merkle.inclusion_proof(datas[:n], i)
        for m in range(n + 1):
            assert log.consistency_proof(m, n) == merkle.consistency_proof(datas[:n], m)


def test_proofs_keep_the_upper_nodes_in_memory_and_stay_right_as_the_log_grows(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny limits, so that the log outgrows the levels kept several times: every proof and root
    still equals the reference, and a repeated proof asks the database for its lowest nodes
    only."""
    monkeypatch.setattr("audit.log.UPPER_LEVELS", 2)
    monkeypatch.setattr("audit.log.UPPER_MIN_LEVEL", 1)
    asked: list[tuple[int, int]] = []
    fetch = log._fetch

    def counting(cur: object, coords: list[tuple[int, int]]) -> list[bytes]:
        asked.extend(coords)
        return fetch(cur, coords)

    monkeypatch.setattr(log, "_fetch", counting)
    events = [make_event(i, subject=f"ps-{i % 5}") for i in range(70)]
    datas = [entry_bytes(e) for e in events]
    for end in (3, 9, 17, 40, 70):
        log.append_many(events[log.size() : end])
        for n in range(1, end + 1):
            assert log.root(n) == merkle.root_hash(datas[:n])
            for i in range(0, n, 3):
                assert log.inclusion_proof(i, n) == merkle.inclusion_proof(datas[:n], i)
            assert log.consistency_proof(n // 2, n) == merkle.consistency_proof(datas[:n], n // 2)
    lowest = (70).bit_length() - 2
    assert {level for level, _ in log._upper} == set(range(lowest, 7))
    asked.clear()
    assert log.inclusion_proof(33, 70) == merkle.inclusion_proof(datas, 33)
    assert asked
    assert all(level < lowest for level, _ in asked)


def test_proofs_on_several_threads_while_the_log_outgrows_the_kept_levels(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API answers proofs from a thread pool: threads reading, pruning and filling the kept
    nodes at once (the log crossing powers of two as it grows) give only right proofs, no
    error. (The race the cache's lock closes, a prune iterating the dict while another thread
    fills it, is too narrow to provoke reliably in a test of this size; a stress script forcing
    prunes with a 1 µs switch interval raised "dictionary changed size" before the lock.)"""
    monkeypatch.setattr("audit.log.UPPER_LEVELS", 2)
    monkeypatch.setattr("audit.log.UPPER_MIN_LEVEL", 1)
    events = [make_event(i, subject=f"ps-{i % 5}") for i in range(130)]
    datas = [entry_bytes(e) for e in events]
    log.append_many(events[:2])
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0]

    def prove(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            n = log.size()
            i = rng.randrange(n)
            try:
                assert log.inclusion_proof(i, n) == merkle.inclusion_proof(datas[:n], i)
            except BaseException as exc:  # reported below, with the thread's own traceback
                errors.append(exc)
                return
            done[0] += 1

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    threads = [threading.Thread(target=prove, args=(seed,)) for seed in range(3)]
    try:
        for t in threads:
            t.start()
        for end in range(3, 131):
            log.append_many(events[end - 1 : end])
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(switch)
    assert not errors, errors[0]
    assert done[0] > 100


def test_a_batch_whose_last_write_fails_leaves_nothing_behind(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a small batch's writes and COMMIT go in one pipeline: when the last of them
    (the head's update) fails, the entries and nodes queued before it are not committed either,
    and the pooled connection serves the next append (SQLite: one transaction, the same)."""
    import dataclasses

    import audit.log as audit_log

    log.append_many([make_event(i) for i in range(3)])
    real = audit_log._append_sql

    def broken(paramstyle: str, dialect: str) -> object:
        sql = real(paramstyle, dialect)
        return dataclasses.replace(sql, update_head=sql.update_head.replace("audit_heads", "nope"))

    monkeypatch.setattr(audit_log, "_append_sql", broken)
    with pytest.raises(Exception, match="nope"):
        log.append_many([make_event(i) for i in range(3, 6)])
    monkeypatch.setattr(audit_log, "_append_sql", real)
    assert log.size() == 3
    assert log.append_many([make_event(i) for i in range(3, 5)]) == [3, 4]
    _assert_log_verifies(log)


def test_a_large_batch_with_a_bad_event_late_in_it_leaves_nothing_behind(
    log: TransparencyLog,
) -> None:
    """A batch from ``COPY_FROM`` entries (``COPY`` on PostgreSQL) with an event that cannot be
    serialised (a naive time) at its end fails whole, and the log goes on from where it was."""
    from audit.log import COPY_FROM

    log.append_many([make_event(i) for i in range(3)])
    bad = dataclasses.replace(make_event(COPY_FROM), time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone"):
        log.append_many([*(make_event(i) for i in range(3, COPY_FROM + 3)), bad])
    assert log.size() == 3
    assert log.append_many([make_event(i) for i in range(3, COPY_FROM + 5)])[-1] == COPY_FROM + 4
    _assert_log_verifies(log)


def test_append_stores_one_node_per_completed_subtree(log: TransparencyLog) -> None:
    log.append_many([make_event(i) for i in range(16)])
    with log._engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(NodeRow)).scalar_one()
    assert count == 31  # 16 leaves + 8 + 4 + 2 + 1: a perfect tree, nothing recomputed


def test_entries_are_canonical_json_of_the_event_with_rfc3339_utc_times(
    log: TransparencyLog,
) -> None:
    index = log.append(make_event(0, consent_id="c-1"))
    record = log.entry(index).record
    assert record["time"] == "2026-11-23T09:00:00.000000Z"
    assert record["consent_id"] == "c-1"
    assert "reason" not in record  # absent fields are left out, never null
    assert (
        log.entry(index).data
        == json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_out_of_range_sizes_and_indices_are_client_errors(log: TransparencyLog) -> None:
    log.append_many([make_event(i) for i in range(3)])
    with pytest.raises(ClientError):
        log.root(4)
    with pytest.raises(ClientError):
        log.inclusion_proof(3, 3)
    with pytest.raises(ClientError):
        log.consistency_proof(2, 1)
    with pytest.raises(NotFoundError):
        log.entry(3)


def test_search_filters_and_paginates_in_index_order(log: TransparencyLog) -> None:
    log.append_many(
        [
            make_event(i, subject=f"ps-{i % 2}", decision="deny" if i % 5 == 0 else "allow")
            for i in range(20)
        ]
    )
    page = log.search(EntryQuery(subjects=frozenset({"ps-1"})), limit=4)
    assert [e.index for e in page.entries] == [1, 3, 5, 7]
    page2 = log.search(EntryQuery(subjects=frozenset({"ps-1"})), limit=4, cursor=page.next_cursor)
    assert [e.index for e in page2.entries] == [9, 11, 13, 15]
    denied = log.search(EntryQuery(decision="deny"), limit=100)
    assert [e.index for e in denied.entries] == [0, 5, 10, 15]
    assert denied.next_cursor is None
    window = log.search(
        EntryQuery(since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=6)), limit=10
    )
    assert [e.index for e in window.entries] == [3, 4, 5]
    assert log.search(EntryQuery(client="JP/GOV/000000/nobody")).entries == ()


def test_logs_sharing_a_database_are_independent(make_log: object) -> None:
    assert callable(make_log)
    a, b = make_log(log_id="node-a"), make_log(log_id="node-b")
    a.append_many([make_event(i) for i in range(5)])
    b.append(make_event(99))
    assert (a.size(), b.size()) == (5, 1)
    assert b.entry(0).record["message_id"] == "msg-000099"


def test_checkpoints_are_signed_stored_and_only_published_when_the_log_grew(
    log: TransparencyLog, signer: NoteSigner
) -> None:
    assert log.latest_checkpoint() is None
    first = log.publish_checkpoint(T0)
    assert first.size == 0
    assert first.root == merkle.EMPTY_ROOT
    log.append_many([make_event(i) for i in range(5)])
    second = log.publish_checkpoint(T0 + timedelta(minutes=1))
    again = log.publish_checkpoint(T0 + timedelta(minutes=2))
    assert again == second
    assert [c.size for c in log.checkpoints()] == [5, 0]
    cp = verify_checkpoint(second.note, signer.verifier())
    assert (cp.origin, cp.size, cp.root) == (log.origin, 5, log.root())
    assert merkle.verify_consistency(0, 5, first.root, second.root, log.consistency_proof(0, 5))


def test_concurrent_threads_append_every_entry_exactly_once(log: TransparencyLog) -> None:
    threads_n, per_thread = 8, 20
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(per_thread // 2):
                log.append(make_event(t * 1000 + k))
            log.append_many([make_event(t * 1000 + 500 + k) for k in range(per_thread // 2)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert log.size() == threads_n * per_thread
    ids = {log.entry(i).record["message_id"] for i in range(log.size())}
    assert len(ids) == threads_n * per_thread
    _assert_log_verifies(log)


def _writer(url: str, log_id: str, count: int, skey: str, batch: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(WRITER), url, log_id, str(count), skey, str(batch)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


@pytest.mark.integration
def test_concurrent_writer_processes_never_fork_the_log(
    db_url: str, make_log: object, signer: NoteSigner
) -> None:
    assert callable(make_log)
    log = make_log()
    procs = [_writer(db_url, "node-a", 30, signer.skey(), batch=1 + p) for p in range(3)]
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    assert log.size() == 90
    _assert_log_verifies(log)


@pytest.mark.integration
def test_a_writer_killed_mid_run_leaves_a_log_that_verifies(
    db_url: str, make_log: object, signer: NoteSigner
) -> None:
    assert callable(make_log)
    log = make_log()
    proc = _writer(db_url, "node-a", 0, signer.skey(), batch=7)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    while log.size() < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    size = log.size()
    assert size >= 7
    assert size % 7 == 0
    _assert_log_verifies(log)
    log.append(make_event(1))  # and the log goes on
    assert log.size() == size + 1
    _assert_log_verifies(log)


def test_recorded_event_is_appended(log: TransparencyLog) -> None:
    event: AuditEvent = make_event(7, kind="consent.revoked", decision="info")
    log.record(event)
    assert log.entry(0).record["kind"] == "consent.revoked"


def test_a_refusal_naming_a_nul_character_is_logged_with_a_replacement_character(
    log: TransparencyLog,
) -> None:
    """A refusal records what the caller sent; PostgreSQL stores no NUL in text, so one there
    made the refusal itself a 500 (found by fuzzing the consent service on PostgreSQL)."""
    event = make_event(0, subject="code\x00x", kind="refusal", decision="deny", purpose="p\x00")
    index = log.append(event)
    assert log.entry(index).record["subject"] == "code\ufffdx"
    assert log.search(EntryQuery(subjects=frozenset({"code\ufffdx"}))).entries[0].index == index
