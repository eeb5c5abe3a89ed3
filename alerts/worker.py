"""The alert worker: the rules evaluated on each new entry of the node's log, after it is committed.

Concept (docs/alerts.md, "How alerts are raised"): the exchange path only appends to the log;
nothing there waits for, or can be failed by, an alert. A background job reads the entries after
its cursor (``alert_cursors``), asks the Rego rules (``policies.alerts``) about each one with the
history it keeps of that citizen (recipients seen, reads in the current window), and, in one
short transaction per batch, stores the alerts raised (once per rule, citizen and trigger: a
unique constraint), queues their e-mails, updates the history and advances the cursor. Reading and
evaluating hold no lock (on SQLite the exchange path's appends take the same writer turn). A crash
before the commit repeats the batch; one after it never does. The transaction first checks, under
the cursor row's lock on PostgreSQL, that the cursor has not moved since the batch was read: of
several worker processes evaluating one batch, one stores it and the others drop theirs.

A round (``run_round``, the background job's call) is taken by one process of a node's replicas at
a time: on PostgreSQL a session advisory lock keyed by the log (``pg_try_advisory_lock``) that a
replica finding it held skips its round instead of evaluating the same entries only to drop its
work at the cursor check (with ``--workers N`` every process runs the job). The lock goes with the
session, so a replica killed mid-round frees it; a host that vanishes holds it until the server's
keepalive probes, set on the lock's session, find the connection dead (~90 s; rounds are late
meanwhile, never lost). On SQLite, where replicas take turns at the one
writer anyway, every replica runs its rounds and the cursor check alone keeps them apart.

Trust assumption: the entries are this node's own (read through ``TransparencyLog``, which checks
each row's columns against its signed bytes). The citizen is named only by the log's subject key
(``audit.completeness.subject_key``), never by the subject.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update

from alerts.store import (
    AlertRow,
    CursorRow,
    EmailRow,
    ExchangeRow,
    PreferenceRow,
    RecipientRow,
    VolumeRow,
)
from audit.completeness import subject_key
from audit.log import EntryQuery, LogEntry, TransparencyLog
from exchange.db import advisory_lock_key, write_transaction
from policies.alerts import AlertRules

__all__ = ["DEFAULT_BATCH", "AlertWorker", "citizen_key", "round_lock_key", "time_us"]

DEFAULT_BATCH = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_log = logging.getLogger("onceonly.alerts")
_KEEPALIVES = (
    "SELECT set_config('tcp_keepalives_idle', '60', false), "
    "set_config('tcp_keepalives_interval', '10', false), "
    "set_config('tcp_keepalives_count', '3', false)"
)


def _unlock(conn: Connection, key: int) -> None:
    """Release a round's lock; a connection that cannot is closed, never pooled with the lock
    (its session, and the lock, end with it). A failed release does not fail the round: its work
    is committed, and the round's own outcome is what the job reports."""
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
    except Exception as exc:
        conn.invalidate(exc)
        _log.warning(
            "alert round lock: released by closing the connection (%s)", type(exc).__name__
        )
    except BaseException:
        conn.invalidate()
        raise


def round_lock_key(log_id: str) -> int:
    """The advisory lock a round over ``log_id`` takes: a signed 64-bit key from the log's id
    (namespaced, so that it meets no other advisory lock of the database)."""
    return advisory_lock_key("alerts.round", log_id)


def citizen_key(origin: str, subject: str) -> str:
    """The key alerts name a citizen by: the log's subject key (a hash), in hex."""
    return subject_key(origin, subject).hex()


def time_us(value: object) -> int:
    """Microseconds since the epoch of an entry's ``time`` (0 when it has none)."""
    if not isinstance(value, str):
        return 0
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if t.tzinfo is None:
        return 0
    return (t - _EPOCH) // _US


def _rfc3339(us: int) -> str:
    return (_EPOCH + us * _US).strftime("%Y-%m-%dT%H:%M:%SZ")


class AlertWorker:
    """Evaluates the alert rules on the entries of ``log`` after its cursor (``run_once``)."""

    def __init__(
        self,
        log: TransparencyLog,
        engine: Engine,
        rules: AlertRules,
        *,
        node: str,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self._log = log
        self._engine = engine
        self._rules = rules
        self._node = node
        self._batch = batch
        self._window_us = rules.window_s * 1_000_000
        self._has_cursor = False

    @property
    def log_id(self) -> str:
        return self._log.log_id

    def cursor(self) -> int:
        with self._engine.connect() as conn:
            value = conn.execute(
                select(CursorRow.next_index).where(CursorRow.log_id == self.log_id)
            ).scalar()
        return int(value or 0)

    def run_round(self, now: datetime | None = None) -> int | None:
        """``run_once`` unless another replica of this node is running a round over the same log
        (PostgreSQL): then ``None`` at once, and that replica's round covers these entries."""
        if self._engine.dialect.name != "postgresql":
            return self.run_once(now)
        key = round_lock_key(self.log_id)
        with self._engine.connect() as conn:
            # a replica whose host vanishes mid-round: the server drops its session (and the
            # lock) once keepalive probes go unanswered for ~90 s, not the system's 2 hours
            conn.execute(text(_KEEPALIVES))
            if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                conn.rollback()
                return None
            conn.commit()  # the lock is the session's: nothing of this connection stays open
            try:
                return self.run_once(now)
            finally:
                _unlock(conn, key)

    def run_once(self, now: datetime | None = None) -> int:
        """Evaluate every entry committed so far; returns how many were evaluated."""
        done = 0
        while True:
            n = self._run_batch(now or datetime.now(UTC))
            done += n
            if n < self._batch:
                return done

    def _run_batch(self, now: datetime) -> int:
        """One batch: read and evaluate without holding the database's write lock (on SQLite the
        exchange path's appends take the same turn), then write it all in one short transaction
        that first checks, under the lock, that no other worker moved the cursor meanwhile."""
        start = self._start()
        page = self._log.search(EntryQuery(), limit=self._batch, cursor=start)
        if not page.entries:
            return 0
        entries = [(e, e.record) for e in page.entries]
        with self._engine.connect() as conn:
            batch = self._load(conn, entries)
        self._evaluate(batch, entries)
        if batch.candidates:
            with self._engine.connect() as conn:
                self._load_raised(conn, batch)
        batch.decide()
        with write_transaction(self._engine) as conn:
            stmt = select(CursorRow.next_index).where(CursorRow.log_id == self.log_id)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update()  # one worker per log at a time
            if int(conn.execute(stmt).scalar_one()) != start:
                return 0  # another worker evaluated this batch first: its history is newer
            self._flush(conn, batch, now)
            # Windows before the previous one can no longer be counted in: forget their reads.
            newest = time_us(entries[-1][1].get("time"))
            horizon = newest - newest % self._window_us - self._window_us
            conn.execute(
                delete(VolumeRow).where(
                    VolumeRow.log_id == self.log_id, VolumeRow.window_us < horizon
                )
            )
            conn.execute(
                delete(ExchangeRow).where(
                    ExchangeRow.log_id == self.log_id, ExchangeRow.time_us < horizon
                )
            )
            conn.execute(
                update(CursorRow)
                .where(CursorRow.log_id == self.log_id)
                .values(next_index=page.entries[-1].index + 1)
            )
        return len(page.entries)

    def _start(self) -> int:
        """The cursor (its row made on this worker's first batch)."""
        if not self._has_cursor:
            self._ensure_cursor()
            self._has_cursor = True
        return self.cursor()

    def _ensure_cursor(self) -> None:
        with self._engine.connect() as conn:
            if conn.execute(
                select(CursorRow.log_id).where(CursorRow.log_id == self.log_id)
            ).first():
                return
        try:
            with write_transaction(self._engine) as conn:
                conn.execute(insert(CursorRow).values(log_id=self.log_id, next_index=0))
        except Exception:  # another worker made it first: that is all this wanted
            with self._engine.connect() as conn:
                if not conn.execute(
                    select(CursorRow.log_id).where(CursorRow.log_id == self.log_id)
                ).first():
                    raise

    # -- one batch: the history it needs read at once, its changes written at once ----------------

    def _load(self, conn: Connection, entries: list[tuple[LogEntry, dict[str, Any]]]) -> _Batch:
        batch = _Batch()
        windows: set[int] = set()
        hashes: set[str] = set()
        for _, record in entries:
            subject = record.get("subject")
            if isinstance(subject, str) and subject and subject not in batch.keys:
                batch.keys[subject] = citizen_key(self._log.origin, subject)
            at = time_us(record.get("time"))
            windows.add(at - at % self._window_us)
            request_hash = _hash(record.get("request_hash"))
            if request_hash is not None:
                hashes.add(request_hash)
        keys = sorted(set(batch.keys.values()))
        log = self.log_id
        if keys:
            for key, off, email in conn.execute(
                select(
                    PreferenceRow.subject_key, PreferenceRow.disabled, PreferenceRow.email
                ).where(PreferenceRow.log_id == log, PreferenceRow.subject_key.in_(keys))
            ):
                batch.prefs[key] = (frozenset(r for r in str(off).split(",") if r), email)
            batch.seen.update(
                (k, c)
                for k, c in conn.execute(
                    select(RecipientRow.subject_key, RecipientRow.client).where(
                        RecipientRow.log_id == log, RecipientRow.subject_key.in_(keys)
                    )
                )
            )
            self._load_volume(conn, batch, keys, sorted(windows), entries[0][0].index)
        if hashes:
            batch.exchanges.update(
                (h, int(i))
                for h, i in conn.execute(
                    select(ExchangeRow.request_hash, ExchangeRow.entry_index).where(
                        ExchangeRow.log_id == log, ExchangeRow.request_hash.in_(sorted(hashes))
                    )
                )
            )
        return batch

    def _load_volume(
        self, conn: Connection, batch: _Batch, keys: list[str], windows: list[int], first: int
    ) -> None:
        """The reads counted in the batch's windows: those before its first entry as a count
        (every entry of the batch comes after them), the rest (re-evaluated entries) one by one."""
        where = (
            VolumeRow.log_id == self.log_id,
            VolumeRow.subject_key.in_(keys),
            VolumeRow.window_us.in_(windows),
        )
        for key, window, n in conn.execute(
            select(VolumeRow.subject_key, VolumeRow.window_us, func.count())
            .where(*where, VolumeRow.entry_index < first)
            .group_by(VolumeRow.subject_key, VolumeRow.window_us)
        ):
            batch.counted(key, int(window)).below = int(n)
        for key, window, index in conn.execute(
            select(VolumeRow.subject_key, VolumeRow.window_us, VolumeRow.entry_index)
            .where(*where, VolumeRow.entry_index >= first)
            .order_by(VolumeRow.entry_index)
        ):
            batch.counted(key, int(window)).indices.append(int(index))

    def _load_raised(self, conn: Connection, batch: _Batch) -> None:
        """Which of the alerts the batch would raise were raised before (a twin record, or the
        batch evaluated again): only those, not every alert its citizens ever had."""
        keys = sorted({c.key for c in batch.candidates})
        dedups = sorted({c.dedup for c in batch.candidates})
        batch.raised.update(
            (r, k, d)
            for r, k, d in conn.execute(
                select(AlertRow.rule, AlertRow.subject_key, AlertRow.dedup).where(
                    AlertRow.log_id == self.log_id,
                    AlertRow.subject_key.in_(keys),
                    AlertRow.dedup.in_(dedups),
                )
            )
        )

    def _flush(self, conn: Connection, batch: _Batch, now: datetime) -> None:
        log = self.log_id
        if batch.new_seen:
            conn.execute(
                insert(RecipientRow),
                [{"log_id": log, "subject_key": k, "client": c} for k, c in batch.new_seen],
            )
        if batch.new_volume:
            conn.execute(
                insert(VolumeRow),
                [
                    {"log_id": log, "subject_key": k, "window_us": w, "entry_index": i}
                    for k, w, i in batch.new_volume
                ],
            )
        if batch.new_exchanges:
            conn.execute(
                insert(ExchangeRow),
                [
                    {"log_id": log, "request_hash": h, "entry_index": i, "time_us": t}
                    for h, i, t in batch.new_exchanges
                ],
            )
        now_us = (now - _EPOCH) // _US
        plain = [{"log_id": log, **row} for row, email in batch.new_alerts if not email]
        if plain:
            conn.execute(insert(AlertRow), plain)
        for row, email in batch.new_alerts:
            _log.info("alert %s raised by entry %d of %s", row["rule"], row["entry_index"], log)
            if not email:
                continue
            # To be mailed: its id goes into the outbox row, in this same transaction.
            alert_id = conn.execute(
                insert(AlertRow).values(log_id=log, **row).returning(AlertRow.id)
            ).scalar_one()
            conn.execute(
                insert(EmailRow).values(
                    alert_id=alert_id, address=email, attempts=0, next_attempt_us=now_us
                )
            )

    # -- one entry -------------------------------------------------------------------------------

    def _own(self, service: object) -> bool:
        return isinstance(service, str) and service.startswith(self._node + "/")

    def _evaluate(self, batch: _Batch, entries: list[tuple[LogEntry, dict[str, Any]]]) -> None:
        for entry, record in entries:
            self._evaluate_one(batch, entry, record)

    def _evaluate_one(self, batch: _Batch, entry: LogEntry, record: dict[str, Any]) -> None:
        subject = record.get("subject")
        key = batch.keys.get(subject) if isinstance(subject, str) else None
        if key is None:
            return  # it names no citizen: there is nobody to alert, no history to keep
        asked = self._rules.asked_decisions
        decision = record.get("decision")
        if asked is not None and decision not in asked:
            return  # the rules say an entry of this decision raises and counts nothing
        if decision in self._rules.own_service_decisions and not self._own(record.get("service")):
            return  # nor one of this decision naming a service this node does not provide
        client = record.get("client") if isinstance(record.get("client"), str) else None
        at_us = time_us(record.get("time"))
        window_us = at_us - at_us % self._window_us
        seen = client is None or (key, client) in batch.seen
        counted = batch.volume.get((key, window_us))
        evaluation = self._rules.evaluate(
            {
                "node": self._node,
                "index": entry.index,
                "entry": _rule_view(record),
                "history": {
                    "recipient_seen": seen,
                    "reads_before_in_window": 0 if counted is None else counted.before(entry.index),
                    "window_start": _rfc3339(window_us),
                },
            }
        )
        if not (evaluation.read or evaluation.alerts):
            return
        if batch.twin(_hash(record.get("request_hash")), entry.index, at_us):
            return  # the other side's record of an exchange already evaluated here
        if evaluation.read:
            if client is not None and not seen:
                batch.seen.add((key, client))
                batch.new_seen.append((key, client))
            # Consented reads are not counted towards the volume.
            if not evaluation.consented and batch.counted(key, window_us).add(entry.index):
                batch.new_volume.append((key, window_us, entry.index))
        disabled = batch.prefs.get(key, (frozenset(), None))[0]
        for raised in evaluation.alerts:
            if raised.rule in disabled:
                continue  # the citizen turned this rule off: no inbox entry, no e-mail
            batch.candidates.append(
                _Candidate(entry, record, key, at_us, raised.rule, raised.dedup[:255])
            )


@dataclass(frozen=True)
class _Candidate:
    """An alert the rules raised, to be stored unless it was raised before."""

    entry: LogEntry
    record: dict[str, Any]
    key: str
    at_us: int
    rule: str
    dedup: str


@dataclass
class _Counted:
    """The non-consented reads of one citizen in one window: how many come before the batch's
    first entry, and the indices of those from it on (in order)."""

    below: int = 0
    indices: list[int] = field(default_factory=list)

    def before(self, index: int) -> int:
        """How many reads counted come before entry ``index`` (one of the batch's): O(log n)."""
        return self.below + bisect_left(self.indices, index)

    def add(self, index: int) -> bool:
        """Counts entry ``index`` (one of the batch's); False when it was counted already."""
        at = bisect_left(self.indices, index)
        if at < len(self.indices) and self.indices[at] == index:
            return False
        self.indices.insert(at, index)  # at the end, but for an entry evaluated again
        return True


@dataclass
class _Batch:
    """What one batch needs of the history (read once) and what it adds (written once)."""

    keys: dict[str, str] = field(default_factory=dict)
    prefs: dict[str, tuple[frozenset[str], str | None]] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    volume: dict[tuple[str, int], _Counted] = field(default_factory=dict)
    raised: set[tuple[str, str, str]] = field(default_factory=set)
    exchanges: dict[str, int] = field(default_factory=dict)
    candidates: list[_Candidate] = field(default_factory=list)
    new_seen: list[tuple[str, str]] = field(default_factory=list)
    new_volume: list[tuple[str, int, int]] = field(default_factory=list)
    new_exchanges: list[tuple[str, int, int]] = field(default_factory=list)
    new_alerts: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)

    def counted(self, key: str, window_us: int) -> _Counted:
        return self.volume.setdefault((key, window_us), _Counted())

    def twin(self, request_hash: str | None, index: int, at_us: int) -> bool:
        """Whether another entry already stood for this exchange (same request hash); else this
        one is remembered as the exchange's."""
        if request_hash is None:
            return False
        first = self.exchanges.get(request_hash)
        if first is None:
            self.exchanges[request_hash] = index
            self.new_exchanges.append((request_hash, index, at_us))
            return False
        return first != index

    def decide(self) -> None:
        """The candidates not raised before become new alerts (``raised`` loaded for them)."""
        for c in self.candidates:
            if (c.rule, c.key, c.dedup) in self.raised:
                continue  # already raised for this trigger (evaluated before, or a twin record)
            self.raised.add((c.rule, c.key, c.dedup))
            entry, record = c.entry, c.record
            row = {
                "rule": c.rule,
                "subject_key": c.key,
                "dedup": c.dedup,
                "client": _text(record.get("client")),
                "service": _text(record.get("service")),
                "entry_index": entry.index,
                "leaf_hash": entry.leaf_hash.hex(),
                "time_us": c.at_us,
                "read": False,
            }
            self.new_alerts.append((row, self.prefs.get(c.key, (frozenset(), None))[1]))


def _hash(value: object) -> str | None:
    """An entry's request hash as the history keeps it (None: it has none)."""
    return value[:255] if isinstance(value, str) and value else None


def _text(value: object) -> str | None:
    return value[:255] if isinstance(value, str) else None


_RULE_FIELDS = (
    "kind",
    "decision",
    "client",
    "service",
    "purpose",
    "consent_id",
    "basis",
    "request_hash",
    "restricted_until",
    "time",
)


def _rule_view(record: dict[str, Any]) -> dict[str, Any]:
    """What the rules see of an entry: its fields, and whether it names a subject (never which)."""
    view = {k: record[k] for k in _RULE_FIELDS if k in record}
    if isinstance(record.get("subject"), str) and record["subject"]:
        view["subject"] = "present"
    return view
