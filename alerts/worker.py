"""The alert worker: the rules evaluated on each new entry of the node's log, after it is committed.

Concept (docs/alerts.md, "How alerts are raised"): the exchange path only appends to the log;
nothing there waits for, or can be failed by, an alert. A background job reads the entries after
its cursor (``alert_cursors``), asks the Rego rules (``policies.alerts``) about each one with the
history it keeps of that citizen (recipients seen, reads in the current window), and, in one
transaction per batch, stores the alerts raised (once per rule, citizen and trigger: a unique
constraint), queues their e-mails, updates the history and advances the cursor. A crash before the
commit repeats the batch; one after it never does. On PostgreSQL the cursor row is locked for the
batch, so several worker processes never evaluate one entry twice.

Trust assumption: the entries are this node's own (read through ``TransparencyLog``, which checks
each row's columns against its signed bytes). The citizen is named only by the log's subject key
(``audit.completeness.subject_key``), never by the subject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

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
from policies.alerts import AlertEvaluation, AlertRules

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


@dataclass(frozen=True, slots=True)
class _Citizen:
    key: str
    disabled: frozenset[str]
    email: str | None


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
        self._ensure_cursor()
        with write_transaction(self._engine) as conn:
            stmt = select(CursorRow.next_index).where(CursorRow.log_id == self.log_id)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update()  # one worker per log at a time
            start = int(conn.execute(stmt).scalar_one())
            page = self._log.search(EntryQuery(), limit=self._batch, cursor=start)
            if not page.entries:
                return 0
            for entry in page.entries:
                self._evaluate(conn, entry, now)
            # Windows before the previous one can no longer be counted in: forget their reads.
            newest = time_us(page.entries[-1].record.get("time"))
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

    # -- one entry -------------------------------------------------------------------------------

    def _citizen(self, conn: Connection, subject: str) -> _Citizen:
        key = citizen_key(self._log.origin, subject)
        row = conn.execute(
            select(PreferenceRow.disabled, PreferenceRow.email).where(
                PreferenceRow.log_id == self.log_id, PreferenceRow.subject_key == key
            )
        ).first()
        if row is None:
            return _Citizen(key, frozenset(), None)
        return _Citizen(key, frozenset(r for r in str(row[0]).split(",") if r), row[1])

    def _evaluate(self, conn: Connection, entry: LogEntry, now: datetime) -> None:
        record = entry.record
        subject = record.get("subject")
        citizen = self._citizen(conn, subject) if isinstance(subject, str) and subject else None
        client = record.get("client") if isinstance(record.get("client"), str) else None
        at_us = time_us(record.get("time"))
        window_us = at_us - at_us % self._window_us
        seen, before = False, 0
        if citizen is not None:
            seen = client is None or self._seen(conn, citizen.key, client)
            before = self._reads(conn, citizen.key, window_us, entry.index)
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
        if citizen is None:
            return
        if (evaluation.read or evaluation.alerts) and self._twin(conn, entry, record, at_us):
            return  # the other side's record of an exchange already evaluated here
        self._remember(conn, evaluation, citizen.key, client, window_us, entry.index, seen=seen)
        for raised in evaluation.alerts:
            if raised.rule in citizen.disabled:
                continue  # the citizen turned this rule off: no inbox entry, no e-mail
            self._store(conn, entry, record, citizen, raised.rule, raised.dedup, at_us, now)

    def _twin(self, conn: Connection, entry: LogEntry, record: dict[str, Any], at_us: int) -> bool:
        """Whether another entry of this log already stood for this exchange (same request
        hash); else this one is remembered as the exchange's."""
        request_hash = record.get("request_hash")
        if not isinstance(request_hash, str) or not request_hash:
            return False
        request_hash = request_hash[:255]
        first = conn.execute(
            select(ExchangeRow.entry_index).where(
                ExchangeRow.log_id == self.log_id, ExchangeRow.request_hash == request_hash
            )
        ).scalar()
        if first is None:
            conn.execute(
                insert(ExchangeRow).values(
                    log_id=self.log_id,
                    request_hash=request_hash,
                    entry_index=entry.index,
                    time_us=at_us,
                )
            )
            return False
        return int(first) != entry.index

    def _seen(self, conn: Connection, key: str, client: str) -> bool:
        return (
            conn.execute(
                select(RecipientRow.client).where(
                    RecipientRow.log_id == self.log_id,
                    RecipientRow.subject_key == key,
                    RecipientRow.client == client,
                )
            ).first()
            is not None
        )

    def _reads(self, conn: Connection, key: str, window_us: int, index: int) -> int:
        """Non-consented reads of the citizen in the window before entry ``index``."""
        value = conn.execute(
            select(func.count())
            .select_from(VolumeRow)
            .where(
                VolumeRow.log_id == self.log_id,
                VolumeRow.subject_key == key,
                VolumeRow.window_us == window_us,
                VolumeRow.entry_index < index,
            )
        ).scalar()
        return int(value or 0)

    def _remember(
        self,
        conn: Connection,
        evaluation: AlertEvaluation,
        key: str,
        client: str | None,
        window_us: int,
        index: int,
        *,
        seen: bool,
    ) -> None:
        if not evaluation.read:
            return
        if client is not None and not seen:
            conn.execute(
                insert(RecipientRow).values(log_id=self.log_id, subject_key=key, client=client)
            )
        if evaluation.consented:
            return  # consented reads are not counted towards the volume
        counted = conn.execute(
            select(VolumeRow.entry_index).where(
                VolumeRow.log_id == self.log_id,
                VolumeRow.subject_key == key,
                VolumeRow.window_us == window_us,
                VolumeRow.entry_index == index,
            )
        ).first()
        if counted is None:
            conn.execute(
                insert(VolumeRow).values(
                    log_id=self.log_id, subject_key=key, window_us=window_us, entry_index=index
                )
            )

    def _store(
        self,
        conn: Connection,
        entry: LogEntry,
        record: dict[str, Any],
        citizen: _Citizen,
        rule: str,
        dedup: str,
        at_us: int,
        now: datetime,
    ) -> None:
        dedup = dedup[:255]
        exists = conn.execute(
            select(AlertRow.id).where(
                AlertRow.log_id == self.log_id,
                AlertRow.rule == rule,
                AlertRow.subject_key == citizen.key,
                AlertRow.dedup == dedup,
            )
        ).first()
        if exists is not None:
            return  # already raised for this trigger (evaluated before, or a twin record)
        alert_id = conn.execute(
            insert(AlertRow)
            .values(
                log_id=self.log_id,
                rule=rule,
                subject_key=citizen.key,
                dedup=dedup,
                client=_text(record.get("client")),
                service=_text(record.get("service")),
                entry_index=entry.index,
                leaf_hash=entry.leaf_hash.hex(),
                time_us=at_us,
                read=False,
            )
            .returning(AlertRow.id)
        ).scalar_one()
        _log.info("alert %s raised by entry %d of %s", rule, entry.index, self.log_id)
        if citizen.email:
            conn.execute(
                insert(EmailRow).values(
                    alert_id=alert_id,
                    address=citizen.email,
                    attempts=0,
                    next_attempt_us=(now - _EPOCH) // _US,
                )
            )


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
