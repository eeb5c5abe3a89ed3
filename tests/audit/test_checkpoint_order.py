"""Replicas of one node share one database and one log key: the checkpoints they store never go
back to a smaller tree, whether they publish from threads or from separate processes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select, update

from audit import subject_map
from audit.checkpoint import NoteSigner
from audit.log import (
    LogIntegrityError,
    StoredCheckpoint,
    TransparencyLog,
    _CheckpointMoved,
    _time_us,
)
from audit.store import CheckpointRow, HeadRow
from exchange.db import make_engine, upgrade
from exchange.errors import DatabaseUnavailable
from tests.audit.audit_factories import ORIGIN, make_event
from tests.audit.test_completeness import _assert_signed_root_is_the_full_trees, _check

WRITER = Path(__file__).parent / "audit_writer.py"
REPO = Path(__file__).parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database for every replica: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _stored_sizes(url: str, log_id: str) -> list[int]:
    """Checkpoint sizes in the order they were stored (the history's order)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        sizes = conn.execute(
            select(CheckpointRow.size)
            .where(CheckpointRow.log_id == log_id)
            .order_by(CheckpointRow.id)
        ).scalars()
        out = list(sizes)
    engine.dispose()
    return out


def _never_decrease(sizes: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(sizes))


@pytest.fixture
def replicas(shared_url: str) -> Iterator[list[TransparencyLog]]:
    """Four replicas of one node's log: one database, one log key, an engine each."""
    signer = NoteSigner.generate(ORIGIN)
    engines = [make_engine(shared_url) for _ in range(4)]
    yield [TransparencyLog(e, log_id="node-a", signer=signer) for e in engines]
    for engine in engines:
        engine.dispose()


@pytest.fixture
def pg_replica(pg_url: str) -> Iterator[Callable[..., TransparencyLog]]:
    """``pg_replica(cls=TransparencyLog)``: a replica of one node's log on a fresh, migrated
    PostgreSQL database — an engine of its own, the log key every replica shares."""
    engine = make_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    signer = NoteSigner.generate(ORIGIN)
    engines: list[Engine] = []

    def make(cls: type[TransparencyLog] = TransparencyLog) -> TransparencyLog:
        engines.append(make_engine(pg_url))
        return cls(engines[-1], log_id="node-a", signer=signer)

    yield make
    for e in engines:
        e.dispose()


def _thread(
    errors: list[BaseException], fn: Callable[[], object], name: str | None = None
) -> threading.Thread:
    """A started thread running ``fn``; what it raises goes to ``errors``."""

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_replica_threads_publishing_checkpoints_never_store_a_smaller_tree(
    shared_url: str, replicas: list[TransparencyLog]
) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas))

    def replica(r: int, log: TransparencyLog) -> None:
        try:
            start.wait()
            for k in range(40):
                log.append(make_event(r * 1000 + k))
                log.sign_checkpoint(datetime.now(UTC))
                log.publish_checkpoint(datetime.now(UTC))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(r, log)) for r, log in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sizes = _stored_sizes(shared_url, "node-a")
    assert len(sizes) >= 40
    assert _never_decrease(sizes), sizes
    assert sizes[-1] == 160
    latest = replicas[0].latest_checkpoint()
    assert latest is not None
    assert latest.size == 160


def _publisher(url: str, skey: str, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(WRITER), url, "node-a", str(count), skey, "1", "publish"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


@pytest.mark.integration
def test_replica_processes_publishing_checkpoints_never_store_a_smaller_tree(
    shared_url: str,
) -> None:
    signer = NoteSigner.generate(ORIGIN)
    procs = [_publisher(shared_url, signer.skey(), 40) for _ in range(3)]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    sizes = _stored_sizes(shared_url, "node-a")
    assert len(sizes) >= 3
    assert _never_decrease(sizes), sizes
    assert sizes[-1] == 120


def test_a_head_behind_the_latest_checkpoint_is_refused_not_signed(
    shared_url: str, replicas: list[TransparencyLog]
) -> None:
    log = replicas[0]
    log.append_many([make_event(i) for i in range(3)])
    log.sign_checkpoint(datetime.now(UTC))
    engine = make_engine(shared_url)
    with engine.begin() as conn:  # a damaged database, made on purpose
        conn.execute(update(HeadRow).where(HeadRow.log_id == "node-a").values(size=1))
    engine.dispose()
    with pytest.raises(LogIntegrityError):
        log.publish_checkpoint(datetime.now(UTC))
    assert _stored_sizes(shared_url, "node-a") == [3]


@pytest.mark.postgres
def test_appends_go_on_while_a_checkpoint_advances_the_map(
    pg_url: str, pg_replica: Callable[..., TransparencyLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a checkpoint holds its own lock, not the head's: another replica appends
    while the map is being brought to the size signed, and a second checkpoint waits its turn
    (the history stays in order of size)."""
    signing, appender, second = pg_replica(), pg_replica(), pg_replica()
    signing.append_many([make_event(i) for i in range(5)])
    in_map, go_on = threading.Event(), threading.Event()
    real_update = subject_map.SubjectTree.update

    def held_update(tree: subject_map.SubjectTree, *args: Any) -> subject_map.TreeUpdate:
        if threading.current_thread().name == "first-checkpoint":  # the map's tree is hashed
            in_map.set()
            go_on.wait(30)
        return real_update(tree, *args)

    monkeypatch.setattr(subject_map.SubjectTree, "update", held_update)
    done: dict[str, int] = {}

    def checkpoint(name: str, log: TransparencyLog) -> None:
        done[name] = log.sign_checkpoint(datetime.now(UTC)).size

    first = threading.Thread(target=checkpoint, args=("first", signing), name="first-checkpoint")
    first.start()
    try:
        assert in_map.wait(30)
        appended = threading.Thread(target=lambda: appender.append(make_event(99)))
        appended.start()
        appended.join(10)
        assert not appended.is_alive(), "an append waited for a checkpoint's map work"
        later = threading.Thread(target=checkpoint, args=("second", second))
        later.start()
        later.join(0.5)
        assert later.is_alive(), "a second checkpoint did not wait for the first"
    finally:
        go_on.set()
        first.join(30)
    later.join(30)
    assert done == {"first": 5, "second": 6}
    assert _stored_sizes(pg_url, "node-a") == [5, 6]


class _HeadLockedLog(TransparencyLog):
    """A replica of the version before the checkpoint lock (as during a rolling upgrade): its
    checkpoints hold the head's row lock for their whole transaction and no advisory lock."""

    def _lock_checkpoints(self, conn: Connection) -> None:
        conn.execute(select(HeadRow.size).where(HeadRow.log_id == self.log_id).with_for_update())

    def _hold_head(self, conn: Connection, latest: StoredCheckpoint | None, size: int) -> None:
        pass  # it holds the head already

    def _store_checkpoint(self, now: datetime, *, only_if_grown: bool) -> StoredCheckpoint:
        self._ensure_head()  # one attempt: the earlier version did not start again
        return self._store_checkpoint_once(now, _time_us(now), only_if_grown=only_if_grown)


@pytest.mark.postgres
@pytest.mark.parametrize("subjects", ["shared", "disjoint"])
@pytest.mark.parametrize("held", ["map-not-begun", "tree-being-hashed"])
def test_a_checkpoint_stored_meanwhile_by_an_earlier_version_is_never_followed_by_a_smaller_one(
    pg_url: str,
    pg_replica: Callable[..., TransparencyLog],
    monkeypatch: pytest.MonkeyPatch,
    subjects: str,
    held: str,
) -> None:
    """During a rolling upgrade a replica of the earlier version orders its checkpoints by the
    head's lock alone. One it stores while this version's checkpoint is inside its map work
    makes that checkpoint start again: the history never goes back, and the map signed last
    is the full tree's (an attack run on this change stored sizes 5, 20, 10)."""
    new, old = pg_replica(), pg_replica(_HeadLockedLog)
    new.append_many([make_event(i, subject="ps-alice") for i in range(5)])
    other = "ps-alice" if subjects == "shared" else "ps-bob"
    in_map, go_on = threading.Event(), threading.Event()
    real_advance, real_update = subject_map.advance, subject_map.SubjectTree.update

    def hold() -> None:
        if threading.current_thread().name == "new-checkpoint":
            in_map.set()
            go_on.wait(30)

    def held_advance(*args: Any, **kwargs: Any) -> subject_map.TreeUpdate:
        hold()
        return real_advance(*args, **kwargs)

    def held_update(tree: subject_map.SubjectTree, *args: Any) -> subject_map.TreeUpdate:
        hold()
        return real_update(tree, *args)

    if held == "map-not-begun":
        monkeypatch.setattr(subject_map, "advance", held_advance)
    else:
        monkeypatch.setattr(subject_map.SubjectTree, "update", held_update)
    errors: list[BaseException] = []
    first = _thread(errors, lambda: new.sign_checkpoint(datetime.now(UTC)), "new-checkpoint")
    assert in_map.wait(30)
    old.append_many([make_event(100 + i, subject=other) for i in range(15)])
    second = _thread(errors, lambda: old.sign_checkpoint(datetime.now(UTC)))
    second.join(0.5)
    go_on.set()
    first.join(60)
    second.join(60)
    assert not errors
    sizes = _stored_sizes(pg_url, "node-a")
    assert _never_decrease(sizes), sizes
    assert sizes[-1] == 20
    latest = new.latest_checkpoint()
    assert latest is not None
    _assert_signed_root_is_the_full_trees(new, latest.note)
    for subject in ("ps-alice", "ps-bob"):
        for log in (new, old):
            _check(log, subject)


@pytest.mark.postgres
def test_an_earlier_version_holding_the_head_and_this_version_never_deadlock(
    pg_url: str, pg_replica: Callable[..., TransparencyLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier version's checkpoint holds the head and then writes map rows; this version's
    checkpoint computes its map first and takes the head before its first write, holding no
    row the other wants: it waits, finds the other's checkpoint stored, and starts again —
    no deadlock, for it or for the appends queued on the head (an attack run on the first
    form of this, which wrote its map rows before taking the head, made exchanges fail)."""
    new, appender, old = pg_replica(), pg_replica(), pg_replica(_HeadLockedLog)
    new.append_many([make_event(i, subject="ps-alice") for i in range(5)])
    in_map, go_on = threading.Event(), threading.Event()
    real_advance = subject_map.advance
    real_once = TransparencyLog._store_checkpoint_once
    deadlocks: list[BaseException] = []

    def held_advance(*args: Any, **kwargs: Any) -> subject_map.TreeUpdate:
        if threading.current_thread().name == "old-checkpoint":
            in_map.set()
            go_on.wait(30)
        return real_advance(*args, **kwargs)

    def spied_once(self: TransparencyLog, *args: Any, **kwargs: Any) -> StoredCheckpoint:
        try:
            return real_once(self, *args, **kwargs)
        except Exception as exc:
            if "40P01" in (
                getattr(exc, "sqlstate", None),
                getattr(exc.__cause__, "sqlstate", None),
            ):
                deadlocks.append(exc)
            raise

    monkeypatch.setattr(subject_map, "advance", held_advance)
    monkeypatch.setattr(TransparencyLog, "_store_checkpoint_once", spied_once)
    errors: list[BaseException] = []
    new.append_many([make_event(10 + i, subject="ps-alice") for i in range(5)])
    threads = [_thread(errors, lambda: old.sign_checkpoint(datetime.now(UTC)), "old-checkpoint")]
    assert in_map.wait(30)
    threads.append(_thread(errors, lambda: new.sign_checkpoint(datetime.now(UTC))))
    threads.append(_thread(errors, lambda: appender.append(make_event(99, subject="ps-bob"))))
    threads[1].join(1.5)  # longer than PostgreSQL's deadlock_timeout (1 s)
    go_on.set()
    for t in threads:
        t.join(60)
    assert not errors
    assert not deadlocks
    sizes = _stored_sizes(pg_url, "node-a")
    assert _never_decrease(sizes), sizes
    assert sizes[0] == 10
    final = new.publish_checkpoint(datetime.now(UTC))
    assert final.size == 11
    _assert_signed_root_is_the_full_trees(new, final.note)
    for subject in ("ps-alice", "ps-bob"):
        _check(new, subject)


class _Deadlock(Exception):
    sqlstate = "40P01"


def test_a_checkpoint_that_lost_a_deadlock_starts_again_then_answers_unavailable(
    replicas: list[TransparencyLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL breaks a deadlock by failing one transaction (SQLSTATE 40P01): the checkpoint
    starts again; one that keeps losing answers 503 (``DatabaseUnavailable``), never a 500."""
    log = replicas[0]
    log.append_many([make_event(i) for i in range(3)])
    real_once = TransparencyLog._store_checkpoint_once
    failures = [_Deadlock("deadlock detected")]

    def once(self: TransparencyLog, *args: Any, **kwargs: Any) -> StoredCheckpoint:
        if failures:
            raise failures.pop()
        return real_once(self, *args, **kwargs)

    monkeypatch.setattr(TransparencyLog, "_store_checkpoint_once", once)
    assert log.sign_checkpoint(datetime.now(UTC)).size == 3
    failures.extend(_Deadlock("deadlock detected") for _ in range(10))
    with pytest.raises(DatabaseUnavailable):
        log.sign_checkpoint(datetime.now(UTC))
    failures.clear()
    failures.append(RuntimeError("not a deadlock"))  # anything else is not retried
    with pytest.raises(RuntimeError):
        log.sign_checkpoint(datetime.now(UTC))


def test_a_publish_that_met_a_covering_checkpoint_stored_meanwhile_returns_it(
    replicas: list[TransparencyLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When an earlier version's replica stored a checkpoint during this one's attempt, a
    publish (the interval's, or a citizen's request) takes that one if it covers the head the
    attempt read, rather than starting again behind a replica that keeps publishing."""
    log, other = replicas[0], replicas[1]
    log.append_many([make_event(i) for i in range(3)])

    def once(self: TransparencyLog, *args: Any, **kwargs: Any) -> StoredCheckpoint:
        raise _CheckpointMoved(3)

    stored = other.sign_checkpoint(datetime.now(UTC))  # the other replica's, size 3
    monkeypatch.setattr(TransparencyLog, "_store_checkpoint_once", once)
    assert log.publish_checkpoint(datetime.now(UTC)) == stored
    with pytest.raises(DatabaseUnavailable):  # sign_checkpoint always signs its own
        log.sign_checkpoint(datetime.now(UTC))
