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

Trust assumption: the entries are this node's own (read through ``TransparencyLog``, which checks
each row's columns against its signed bytes). The citizen is named only by the log's subject key
(``audit.completeness.subject_key``), never by the subject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

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
from exchange.db import write_transaction
from policies.alerts import AlertRules

__all__ = ["DEFAULT_BATCH", "AlertWorker", "citizen_key", "time_us"]

DEFAULT_BATCH = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_log = logging.getLogger("onceonly.alerts")


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

    @property
    def log_id(self) -> str:
        return self._log.log_id

    def cursor(self) -> int:
        with self._engine.connect() as conn:
            value = conn.execute(
                select(CursorRow.next_index).where(CursorRow.log_id == self.log_id)
            ).scalar()
        return int(value or 0)

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
        self._ensure_cursor()
        start = self.cursor()
        page = self._log.search(EntryQuery(), limit=self._batch, cursor=start)
        if not page.entries:
            return 0
        entries = [(e, e.record) for e in page.entries]
        with self._engine.connect() as conn:
            batch = self._load(conn, entries)
        for entry, record in entries:
            self._evaluate(batch, entry, record)
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
            request_hash = record.get("request_hash")
            if isinstance(request_hash, str) and request_hash:
                hashes.add(request_hash[:255])
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
            for key, window, index in conn.execute(
                select(VolumeRow.subject_key, VolumeRow.window_us, VolumeRow.entry_index).where(
                    VolumeRow.log_id == log,
                    VolumeRow.subject_key.in_(keys),
                    VolumeRow.window_us.in_(sorted(windows)),
                )
            ):
                batch.volume.setdefault((key, int(window)), set()).add(int(index))
            batch.raised.update(
                (r, k, d)
                for r, k, d in conn.execute(
                    select(AlertRow.rule, AlertRow.subject_key, AlertRow.dedup).where(
                        AlertRow.log_id == log, AlertRow.subject_key.in_(keys)
                    )
                )
            )
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

    def _evaluate(self, batch: _Batch, entry: LogEntry, record: dict[str, Any]) -> None:
        subject = record.get("subject")
        key = batch.keys.get(subject) if isinstance(subject, str) else None
        client = record.get("client") if isinstance(record.get("client"), str) else None
        at_us = time_us(record.get("time"))
        window_us = at_us - at_us % self._window_us
        seen, before = False, 0
        if key is not None:
            seen = client is None or (key, client) in batch.seen
            counted = batch.volume.get((key, window_us), set())
            before = sum(1 for i in counted if i < entry.index)
        evaluation = self._rules.evaluate(
            {
                "node": self._node,
                "index": entry.index,
                "entry": _rule_view(record),
                "history": {
                    "recipient_seen": seen,
                    "reads_before_in_window": before,
                    "window_start": _rfc3339(window_us),
                },
            }
        )
        if key is None or not (evaluation.read or evaluation.alerts):
            return
        if batch.twin(record.get("request_hash"), entry.index, at_us):
            return  # the other side's record of an exchange already evaluated here
        if evaluation.read:
            if client is not None and not seen:
                batch.seen.add((key, client))
                batch.new_seen.append((key, client))
            if not evaluation.consented:  # consented reads are not counted towards the volume
                counted = batch.volume.setdefault((key, window_us), set())
                if entry.index not in counted:
                    counted.add(entry.index)
                    batch.new_volume.append((key, window_us, entry.index))
        disabled, email = batch.prefs.get(key, (frozenset(), None))
        for raised in evaluation.alerts:
            if raised.rule in disabled:
                continue  # the citizen turned this rule off: no inbox entry, no e-mail
            dedup = raised.dedup[:255]
            if (raised.rule, key, dedup) in batch.raised:
                continue  # already raised for this trigger (evaluated before, or a twin record)
            batch.raised.add((raised.rule, key, dedup))
            row = {
                "rule": raised.rule,
                "subject_key": key,
                "dedup": dedup,
                "client": _text(record.get("client")),
                "service": _text(record.get("service")),
                "entry_index": entry.index,
                "leaf_hash": entry.leaf_hash.hex(),
                "time_us": at_us,
                "read": False,
            }
            batch.new_alerts.append((row, email))


@dataclass
class _Batch:
    """What one batch needs of the history (read once) and what it adds (written once)."""

    keys: dict[str, str] = field(default_factory=dict)
    prefs: dict[str, tuple[frozenset[str], str | None]] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    volume: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    raised: set[tuple[str, str, str]] = field(default_factory=set)
    exchanges: dict[str, int] = field(default_factory=dict)
    new_seen: list[tuple[str, str]] = field(default_factory=list)
    new_volume: list[tuple[str, int, int]] = field(default_factory=list)
    new_exchanges: list[tuple[str, int, int]] = field(default_factory=list)
    new_alerts: list[tuple[dict[str, Any], str | None]] = field(default_factory=list)

    def twin(self, request_hash: object, index: int, at_us: int) -> bool:
        """Whether another entry already stood for this exchange (same request hash); else this
        one is remembered as the exchange's."""
        if not isinstance(request_hash, str) or not request_hash:
            return False
        request_hash = request_hash[:255]
        first = self.exchanges.get(request_hash)
        if first is None:
            self.exchanges[request_hash] = index
            self.new_exchanges.append((request_hash, index, at_us))
            return False
        return first != index


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
