"""The transparency log: an append-only RFC 9162 Merkle tree of audit entries, in the database.

Concept (Certificate Transparency, Trillian, Rekor): every exchange, refusal and consent change is
an *entry* — the canonical JSON (RFC 8785) of an ``exchange.ports.AuditEvent`` — and a leaf of a
Merkle tree. The log signs checkpoints (``audit.checkpoint``) of its size and root; anyone holding
one can check an entry's inclusion proof and that a later checkpoint extends it.

Storage (``audit.store``): the hash of every complete perfect subtree is stored as it completes,
so an append reads the O(log n) hashes of the current compact range (kept in the head row) and
writes O(1) amortised nodes, and any root or proof for any size is assembled from O(log n) stored hashes: nothing is
ever recomputed from all the leaves.

Concurrency and crashes: the entry rows, their nodes and the new head are written in ONE
transaction that first locks the log's head row (PostgreSQL ``SELECT … FOR UPDATE``; SQLite
``BEGIN IMMEDIATE``), so writers in any number of threads, processes or replicas append in one
total order and the tree never forks; a writer killed at any point leaves the last committed log.
Checkpoints are read, signed and stored under the same lock, so replicas sharing one database and
one log key store checkpoints whose sizes never decrease.

Trust assumption: this process trusts its own database; auditors trust only signed checkpoints
and proofs, and verify exports offline with ``audit.verify``.
"""

from __future__ import annotations

import base64
import functools
import json
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from audit import merkle, restricted, subject_map
from audit.checkpoint import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
    verify_checkpoint,
)
from audit.columns import INDEX_COLUMNS, column_mismatch, columns_json, index_columns
from audit.completeness import MAP_EXTENSION, CompletenessError, SubjectProof, map_root_of
from audit.store import CheckpointRow, EntryRow, HeadRow, RestrictedRow, node_key
from exchange.canonical import canonical_json
from exchange.db import advisory_lock_key, driver_cursor, read_cursor
from exchange.errors import ClientError, DatabaseUnavailable, NotFoundError, OnceOnlyError
from exchange.ports import AuditEvent, AuditSink

__all__ = [
    "MAX_PAGE_SIZE",
    "EntryPage",
    "EntryQuery",
    "LogEntry",
    "LogIntegrityError",
    "RestrictedEntry",
    "StoredCheckpoint",
    "TransparencyLog",
    "entry_bytes",
    "entry_record",
    "format_time",
]

MAX_PAGE_SIZE = 1000
RELEASE_BATCH = 1000
"""Restricted entries released per transaction (``TransparencyLog.release_due``)."""
_PROOF_ATTEMPTS = 5
_CHECKPOINT_ATTEMPTS = 5
_DEADLOCK = "40P01"  # PostgreSQL's deadlock_detected
EXPORT_CHUNK = 5000
# Proofs keep the tree's committed nodes of the UPPER_LEVELS levels under the top in memory
# (never those below UPPER_MIN_LEVEL): at most 2^(UPPER_LEVELS + 1) nodes, a few MB.
UPPER_LEVELS = 14
UPPER_MIN_LEVEL = 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_T = TypeVar("_T")


class LogIntegrityError(OnceOnlyError):
    """The stored log contradicts itself (a tree node missing, an entry's search columns not those
    of its signed bytes): the database was damaged or edited."""

    code = "Server.Audit.Integrity"
    status = 500


def format_time(t: datetime) -> str:
    """RFC 3339, UTC, microseconds, ``Z``: the one time format of entries."""
    if t.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    if t.year >= 1000:  # four digits: isoformat's form, "+00:00" as "Z" (strftime is slower)
        return t.isoformat(timespec="microseconds")[:-6] + "Z"
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_us(t: datetime) -> int:
    if t.tzinfo is None:
        raise ClientError("times must carry a timezone")
    return (t - _EPOCH) // _US


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_event_values = operator.attrgetter(*_EVENT_FIELDS)


def entry_record(event: AuditEvent) -> dict[str, Any]:
    """The JSON object of an entry: the event's fields, ``None`` and empty ``extra`` left out."""
    out: dict[str, Any] = {}
    for name, value in zip(_EVENT_FIELDS, _event_values(event), strict=True):
        if value is None or (name == "extra" and not value):
            continue
        if name in ("time", "restricted_until"):
            value = format_time(value)
        elif name == "extra":
            value = {str(k): str(v) for k, v in value.items()}
        out[name] = value
    return out


def entry_bytes(event: AuditEvent) -> bytes:
    """The leaf data: RFC 8785 canonical JSON of ``entry_record(event)``."""
    return _record_json(entry_record(event))


_STRINGS = frozenset((str,))
_encode_strings = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _record_json(record: dict[str, Any]) -> bytes:
    """``canonical_json(record)``, without its walk over the value when every value is a string
    (most entries; the keys are field names): for those it is exactly this encoding."""
    if _STRINGS.issuperset(map(type, record.values())):
        return _encode_strings(record).encode("utf-8")
    return canonical_json(record)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored entry: its index, its exact bytes and its leaf hash."""

    index: int
    data: bytes
    leaf_hash: bytes

    @property
    def record(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


@dataclass(frozen=True, slots=True)
class EntryQuery:
    """Search filters; every given filter must match. ``until`` is exclusive."""

    subjects: frozenset[str] | None = None
    client: str | None = None
    service: str | None = None
    purpose: str | None = None
    decision: str | None = None
    kind: str | None = None
    consent_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EntryPage:
    entries: tuple[LogEntry, ...]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint the log signed: its size and root, when, and the signed note text."""

    size: int
    root: bytes
    time: datetime
    note: str


@dataclass(frozen=True, slots=True)
class RestrictedEntry:
    """A restricted entry as auditors see it: the entry (no subject in it), its release time
    from its bytes, the index of its release entry once released, and what is wrong with its
    stored row, if anything (never the subject or the salt)."""

    entry: LogEntry
    until: datetime | None
    released: int | None
    problem: str | None

    def overdue(self, now: datetime) -> bool:
        """Past its release time (or without a valid one) and not released."""
        return self.released is None and (self.until is None or self.until <= now)


@dataclass(slots=True)
class _Prepared:
    data: bytes
    leaf_hash: bytes
    columns: tuple[Any, ...]  # the searchable copies, in the order of _APPEND_SQL.insert_entries
    hidden: tuple[str, bytes, int] | None = None  # a restricted entry's subject, salt, release
    subject: str | None = None  # the subject its bytes name (none for a restricted entry)


@dataclass(frozen=True, slots=True)
class _AppendSql:
    lock_head: str
    insert_entries: str
    insert_nodes: str
    update_head: str
    insert_restricted: str
    copy_entries: str = ""  # PostgreSQL only
    copy_nodes: str = ""


_APPEND_SQL = _AppendSql(
    lock_head="SELECT size, compact_range FROM audit_heads WHERE log_id = ?",
    insert_entries=(
        "INSERT INTO audit_entries (log_id, idx, data, leaf_hash, time_us, node, kind, decision, "
        "client, service, purpose, subject, consent_id, message_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
    insert_nodes="INSERT INTO audit_nodes (log_id, node_key, hash) VALUES (?, ?, ?)",
    update_head="UPDATE audit_heads SET size = ?, root = ?, compact_range = ? WHERE log_id = ?",
    insert_restricted=(
        "INSERT INTO audit_restricted (log_id, idx, subject, salt, release_us, released_idx) "
        "VALUES (?, ?, ?, ?, ?, NULL)"
    ),
)


_COLUMNS = tuple(getattr(EntryRow, name) for name in INDEX_COLUMNS)
_COPY_ENTRIES = (
    "COPY audit_entries (log_id, idx, data, leaf_hash, time_us, node, kind, decision, "
    "client, service, purpose, subject, consent_id, message_id) FROM STDIN (FORMAT BINARY)"
)
_ENTRY_TYPES = ("text", "int8", "bytea", "bytea", "int8", *("text",) * 9)
COPY_FROM = 32
"""From this many entries an append on PostgreSQL writes its rows with ``COPY``."""


def _checked(row: Sequence[Any]) -> LogEntry:
    """A stored row as a ``LogEntry``, once its search columns are shown to be those of its bytes.

    A row whose columns disagree (an operator re-pointed ``subject``, say) is never answered from:
    it is an integrity failure naming the entry."""
    idx, data, leaf = row[0], bytes(row[1]), bytes(row[2])
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    bad = column_mismatch(record, row[3:]) if isinstance(record, dict) else "data"
    if bad is not None:
        raise LogIntegrityError(
            f"entry {idx}: its stored {bad} is not the one its signed bytes hold"
        )
    return LogEntry(idx, data, leaf)


@functools.cache
def _append_sql(paramstyle: str, dialect: str) -> _AppendSql:
    """The append path's SQL (constants above) in a driver's positional parameter style."""
    sql = _APPEND_SQL
    if paramstyle != "qmark":
        sql = _AppendSql(*(statement.replace("?", "%s") for statement in astuple(sql)))
    if dialect == "postgresql":  # lock the head row; SQLite's BEGIN IMMEDIATE locked the file
        sql = replace(
            sql,
            lock_head=sql.lock_head + " FOR UPDATE",
            copy_entries=_COPY_ENTRIES,
            copy_nodes="COPY audit_nodes (log_id, node_key, hash) FROM STDIN (FORMAT BINARY)",
        )
    return sql


_HEAD_SIZE = "SELECT size FROM audit_heads WHERE log_id = ?"
_EXPORT = (
    "SELECT e.idx, n.hash, e.data, e.time_us, e.node, e.kind, e.decision, e.client, e.service, "
    "e.purpose, e.subject, e.consent_id, e.message_id"  # INDEX_COLUMNS, in its order
    " FROM audit_entries e LEFT JOIN audit_nodes n ON n.log_id = ? AND n.node_key = e.idx * 64"
    " WHERE e.log_id = ? AND e.idx >= ? AND e.idx < ? ORDER BY e.idx"
)
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":")).encode
# The same lines written by the database, which formats a row in C where Python's JSON encoder
# and f-strings cost more than the row's fetch: compact JSON, text as JSON strings (UTF-8, the
# escapes of RFC 8259), in the order of INDEX_COLUMNS. SQLite has no base64: it returns the hash.
_FROM_EXPORT = _EXPORT[_EXPORT.index(" FROM ") :]
_EXPORT_LINES_SQLITE = (
    "SELECT e.idx, n.hash, json_object('time_us', e.time_us, 'node', e.node, 'kind', e.kind, "
    "'decision', e.decision, 'client', e.client, 'service', e.service, 'purpose', e.purpose, "
    "'subject', e.subject, 'consent_id', e.consent_id, 'message_id', e.message_id) "
    "|| ',\"entry\":' || CAST(e.data AS TEXT) || '}'" + _FROM_EXPORT
)
_EXPORT_LINES_POSTGRES = (
    "SELECT '{\"index\":' || e.idx || ',\"leaf_hash\":' || CASE WHEN length(n.hash) > 0 "
    "THEN '\"' || translate(encode(n.hash, 'base64'), E'\\n', '') || '\"' ELSE 'null' END "
    '|| \',"columns":{"time_us":\' || e.time_us'
    + "".join(
        f" || ',\"{name}\":' || COALESCE(to_json(e.{name})::text, 'null')"
        for name in INDEX_COLUMNS[1:]
    )
    + " || '},\"entry\":' || convert_from(e.data, 'UTF8') || '}'"
    + _FROM_EXPORT
)
_ANY_DUE = (
    "SELECT 1 FROM audit_restricted WHERE log_id = ? AND released_idx IS NULL "
    "AND release_us <= ? LIMIT 1"
)
# the completeness proof's first read, one round trip: the head's size, the latest checkpoint,
# and whether a restricted entry is due to be released (then the proof waits for its release)
_COVERING = (
    "SELECT h.size, c.size, c.root, c.time_us, c.note, EXISTS (SELECT 1 FROM audit_restricted"
    " WHERE log_id = ? AND released_idx IS NULL AND release_us <= ?) FROM audit_heads h"
    " LEFT JOIN audit_checkpoints c ON c.id ="
    " (SELECT max(id) FROM audit_checkpoints WHERE log_id = ?) WHERE h.log_id = ?"
)
_NODES = "SELECT node_key, hash FROM audit_nodes WHERE log_id = ? AND node_key"


class _ReadSql:
    """The tree read path's SQL, straight to the driver (``TransparencyLog._from_tree``)."""

    def __init__(self, paramstyle: str, dialect: str) -> None:
        self._p = "?" if paramstyle == "qmark" else "%s"
        self.postgres = dialect == "postgresql"
        self.head_size = _HEAD_SIZE.replace("?", self._p)
        self.any_due = _ANY_DUE.replace("?", self._p)
        self.export = _EXPORT.replace("?", self._p)
        self.covering = _COVERING.replace("?", self._p)
        self.mark = self._p
        lines = _EXPORT_LINES_POSTGRES if self.postgres else _EXPORT_LINES_SQLITE
        self.export_lines = lines.replace("?", self._p)
        self._nodes = _NODES.replace("?", self._p)

    def nodes(self, log_id: str, keys: list[int]) -> tuple[str, tuple[Any, ...]]:
        if self.postgres:  # one statement text whatever the number of keys
            return f"{self._nodes} = ANY(%s)", (log_id, keys)
        return f"{self._nodes} IN ({', '.join([self._p] * len(keys))})", (log_id, *keys)


class TransparencyLog:
    """One log (``log_id``) in a database that may hold several; implements ``AuditSink``."""

    def __init__(self, engine: Engine, *, log_id: str, signer: NoteSigner) -> None:
        self._engine = engine
        self.log_id = log_id
        self._signer = signer
        self._head_ready = False
        self._last_note: tuple[str, bytes] | None = None
        self._known_size = 0  # the largest size this process has seen the log have
        self._read_sql = _ReadSql(engine.dialect.paramstyle, engine.dialect.name)
        self._map_cache = subject_map.MapCache()  # the subject map's tree (audit.subject_map)
        self._upper: dict[tuple[int, int], bytes] = {}  # committed tree nodes near the top
        self._upper_lowest = UPPER_MIN_LEVEL
        self._upper_lock = threading.Lock()

    # --- identity ------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The checkpoint origin line, which is also the log key's name."""
        return self._signer.name

    def verifier(self) -> NoteVerifier:
        return self._signer.verifier()

    def vkey(self) -> str:
        """The log's public key as a C2SP ``vkey`` (what auditors pin)."""
        return self._signer.vkey()

    # --- writing -------------------------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """``exchange.ports.AuditSink``: durably append before the exchange goes on."""
        self.append(event)

    def append(self, event: AuditEvent) -> int:
        """Append one event; returns its index once committed."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[int]:
        """Append events in order, in one transaction; returns their indices.

        The hot path of every exchange, so its statements go straight to the driver (fixed
        SQL, positional parameters): SQLAlchemy's per-statement work cost more than SQLite's."""
        prepared = [self._prepare(e) for e in events]
        if not prepared:
            return []
        self._ensure_head()
        sql = _append_sql(self._engine.dialect.paramstyle, self._engine.dialect.name)
        if sql.copy_entries and len(prepared) < COPY_FROM:
            n = self._append_pipelined(sql, prepared)  # (COPY, for larger batches, cannot)
        else:
            n = self._append_locked(sql, prepared)
        # committed: the next checkpoint's subject map needs not read these entries back
        self._map_cache.remember(n, [(p.leaf_hash, p.subject) for p in prepared])
        self._known_size = max(self._known_size, n + len(prepared))
        return list(range(n, n + len(prepared)))

    def _append_locked(self, sql: _AppendSql, prepared: Sequence[_Prepared]) -> int:
        """One transaction: lock the head, write the entries, their nodes and the new head."""
        with self._engine.connect() as conn:
            conn.begin()  # so that conn.commit() below commits what the raw cursor wrote
            self._begin_write(conn)
            with driver_cursor(conn) as cur:
                n, frontier = self._lock_head(cur, sql)
                self._append_at(cur, sql, n, frontier, prepared)
            conn.commit()
        return n

    def _copy_entries(
        self, cur: Any, sql: _AppendSql, n: int, prepared: Sequence[_Prepared]
    ) -> None:
        """``COPY`` the entries as rows ``n, n+1, …``."""
        with cur.copy(sql.copy_entries) as copy:
            copy.set_types(_ENTRY_TYPES)
            for pos, p in enumerate(prepared, n):
                copy.write_row((self.log_id, pos, p.data, p.leaf_hash, *p.columns))

    def _append_pipelined(self, sql: _AppendSql, prepared: Sequence[_Prepared]) -> int:
        """PostgreSQL, a small batch: the same transaction in two round trips instead of six.

        In pipeline mode on a connection in autocommit, ``BEGIN`` and the head's lock go out
        together (one wait, for the head), then every write and the ``COMMIT`` (one wait, for the
        commit). Any error fails the transaction whole; the connection is then discarded rather
        than returned to the pool mid-transaction (the server rolls back what it holds)."""
        pooled = self._engine.raw_connection()
        driver: Any = pooled.driver_connection
        try:
            driver.autocommit = True
            with driver.pipeline(), driver.cursor() as cur:
                cur.execute("BEGIN")
                n, frontier = self._lock_head(cur, sql)
                self._append_at(cur, sql, n, frontier, prepared)
                cur.execute("COMMIT")
            driver.autocommit = False
        except BaseException as exc:
            pooled.invalidate(exc if isinstance(exc, Exception) else None)
            raise
        finally:
            pooled.close()
        return n

    def _lock_head(self, cur: Any, sql: _AppendSql) -> tuple[int, list[tuple[int, bytes]]]:
        """Take the log's write lock; the size and compact range (level, hash) it holds."""
        cur.execute(sql.lock_head, (self.log_id,))
        found = cur.fetchone()
        if found is None:
            raise LogIntegrityError("the log has no head row")
        n, packed = int(found[0]), bytes(found[1])
        levels = [level for level, _ in _compact_range(n)]
        if len(packed) != len(levels) * merkle.HASH_SIZE:
            raise LogIntegrityError("the log head's compact range does not match its size")
        frontier = [
            (level, packed[k * merkle.HASH_SIZE : (k + 1) * merkle.HASH_SIZE])
            for k, level in enumerate(levels)
        ]
        return n, frontier

    def _append_at(
        self,
        cur: Any,
        sql: _AppendSql,
        n: int,
        frontier: list[tuple[int, bytes]],
        prepared: Sequence[_Prepared],
    ) -> None:
        """Write ``prepared`` as entries ``n, n+1, …`` under the lock ``_lock_head`` took."""
        copy = bool(sql.copy_entries) and len(prepared) >= COPY_FROM
        if copy:
            # PostgreSQL, a batch: COPY streams the rows as one command, where each INSERT of
            # executemany is parsed, planned and executed on its own (docs/performance.md)
            self._copy_entries(cur, sql, n, prepared)
        else:
            rows = [
                (self.log_id, pos, p.data, p.leaf_hash, *p.columns)
                for pos, p in enumerate(prepared, n)
            ]
            cur.executemany(sql.insert_entries, rows)
        self._write_tree(cur, sql, n, frontier, prepared, copy=copy)

    def _write_tree(
        self,
        cur: Any,
        sql: _AppendSql,
        n: int,
        frontier: list[tuple[int, bytes]],
        prepared: Sequence[_Prepared],
        *,
        copy: bool,
    ) -> None:
        """After the entries ``n, n+1, …``: the tree nodes they complete, the hidden rows of the
        restricted ones, and the new head."""
        node_rows = self._node_rows(n, frontier, prepared)
        hidden_rows = [
            (self.log_id, pos, *p.hidden) for pos, p in enumerate(prepared, n) if p.hidden
        ]
        root = merkle.fold_compact_range([h for _, h in frontier])
        if copy:
            with cur.copy(sql.copy_nodes) as rows:
                rows.set_types(("text", "int8", "bytea"))
                for row in node_rows:
                    rows.write_row(row)
        else:
            cur.executemany(sql.insert_nodes, node_rows)
        if hidden_rows:  # a restricted entry's subject and salt, in the same transaction
            cur.executemany(sql.insert_restricted, hidden_rows)
        cur.execute(
            sql.update_head,
            (n + len(prepared), root, b"".join(h for _, h in frontier), self.log_id),
        )

    def _node_rows(
        self, n: int, frontier: list[tuple[int, bytes]], prepared: Sequence[_Prepared]
    ) -> list[tuple[str, int, bytes]]:
        """The nodes entries ``n, n+1, …`` complete; ``frontier`` becomes the new compact range."""
        node_rows: list[tuple[str, int, bytes]] = []
        for pos, p in enumerate(prepared, n):
            node_rows.append((self.log_id, node_key(0, pos), p.leaf_hash))
            level, cur_hash = 0, p.leaf_hash
            # a binary counter: each completed pair of equal subtrees becomes a stored node
            while frontier and frontier[-1][0] == level:
                cur_hash = merkle.node_hash(frontier.pop()[1], cur_hash)
                level += 1
                node_rows.append((self.log_id, node_key(level, pos >> level), cur_hash))
            frontier.append((level, cur_hash))
        return node_rows

    def _prepare(self, event: AuditEvent) -> _Prepared:
        record = entry_record(event)
        hidden = None
        if event.restricted_until is not None and event.subject is not None:
            # a restricted entry (audit.restricted): its bytes commit to the subject, never name
            # it, so neither the subject map nor the citizen's search sees it before release
            salt = restricted.new_salt()
            del record["subject"]
            record["subject_commitment"] = restricted.commitment(salt, event.subject)
            hidden = (event.subject, salt, _time_us(event.restricted_until))
        data = _record_json(record)
        # the searchable copies come from the record itself (audit.columns), never separately
        subject = record.get("subject")
        return _Prepared(
            data,
            merkle.leaf_hash(data),
            index_columns(record),
            hidden,
            subject if isinstance(subject, str) else None,
        )

    def _begin_write(self, conn: Connection) -> None:
        if conn.dialect.name == "sqlite":
            # take SQLite's write lock now, before reading the head (no read-then-upgrade race)
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _lock_checkpoints(self, conn: Connection) -> None:
        """Take the lock that orders this log's checkpoints, until the transaction ends: on
        PostgreSQL an advisory lock keyed by the log (appends take the head's row lock, not
        this); on SQLite the database's write lock, as every writer does."""
        if conn.dialect.name == "postgresql":
            key = advisory_lock_key("audit.checkpoint", self.log_id)
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        else:
            self._begin_write(conn)

    def _ensure_head(self) -> None:
        if self._head_ready:
            return
        try:
            with self._engine.begin() as conn:
                found = conn.execute(
                    select(HeadRow.size).where(HeadRow.log_id == self.log_id)
                ).first()
                if found is None:
                    conn.execute(
                        insert(HeadRow).values(
                            log_id=self.log_id, size=0, root=merkle.EMPTY_ROOT, compact_range=b""
                        )
                    )
        except IntegrityError:
            pass  # another writer created it first
        self._head_ready = True

    # --- reading the tree ----------------------------------------------------------------------

    def _head(self, conn: Connection) -> tuple[int, bytes]:
        row = conn.execute(
            select(HeadRow.size, HeadRow.root).where(HeadRow.log_id == self.log_id)
        ).first()
        head = (0, merkle.EMPTY_ROOT) if row is None else (int(row[0]), bytes(row[1]))
        self._known_size = max(self._known_size, head[0])
        return head

    def size(self) -> int:
        with self._engine.connect() as conn:
            return self._head(conn)[0]

    def head(self) -> tuple[int, bytes]:
        """The current size and root, read together."""
        with self._engine.connect() as conn:
            return self._head(conn)

    def _head_size(self, cur: Any) -> int:
        cur.execute(self._read_sql.head_size, (self.log_id,))
        found = cur.fetchone()
        self._known_size = max(self._known_size, 0 if found is None else int(found[0]))
        return self._known_size

    def _fetch(self, cur: Any, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        """The stored hashes of perfect subtrees ``coords``, in one round trip per 500."""
        if not coords:
            return []
        found: dict[tuple[int, int], bytes] = {}
        wanted = list(dict.fromkeys(coords))
        for i in range(0, len(wanted), 500):
            keys = {node_key(lv, ix): (lv, ix) for lv, ix in wanted[i : i + 500]}
            cur.execute(*self._read_sql.nodes(self.log_id, list(keys)))
            found.update({keys[int(k)]: bytes(h) for k, h in cur.fetchall()})
        try:
            return [found[c] for c in coords]
        except KeyError as exc:
            raise LogIntegrityError(f"tree node {exc.args[0]} is missing") from exc

    def _fetch_cached(self, cur: Any, coords: Sequence[tuple[int, int]]) -> list[bytes]:
        """``_fetch`` of committed nodes, the upper ones from ``_upper`` where it has them.

        A stored node never changes once committed, and every proof over a log of ``2^k``
        entries crosses the same few nodes near the top: kept here, a proof reads from the
        database only the nodes of its own lowest levels, whatever the log's size (the
        ``UPPER_LEVELS`` levels under the largest tree seen, so fewer than
        ``2^(UPPER_LEVELS + 1)`` nodes). Only this read path fills it: its cursor sees committed
        rows only. Proofs run on several threads at once (the API's thread pool): the cache is
        read, pruned and filled under ``_upper_lock``, the database read outside it."""
        with self._upper_lock:
            lowest = max(self._known_size.bit_length() - UPPER_LEVELS, UPPER_MIN_LEVEL)
            if lowest != self._upper_lowest:  # the log outgrew the levels kept: drop the lowest
                self._upper = {c: h for c, h in self._upper.items() if c[0] >= lowest}
                self._upper_lowest = lowest
            upper = self._upper
            kept = {c: upper[c] for c in coords if c[0] >= lowest and c in upper}
        missing = [c for c in coords if c not in kept]
        fetched = dict(zip(missing, self._fetch(cur, missing), strict=True))
        with self._upper_lock:
            if lowest == self._upper_lowest:  # not if another thread moved the levels since
                self._upper.update((c, h) for c, h in fetched.items() if c[0] >= lowest)
        return [kept[c] if c in kept else fetched[c] for c in coords]

    def _from_tree(self, size: int, fn: Callable[[merkle.SubtreeHashes], _T]) -> _T:
        """``fn`` over the tree of ``size`` entries, reading each stored hash it needs at once.

        ``fn`` runs twice: once to learn which stored nodes it reads (which never depends on the
        hash values), then with those nodes fetched. Nodes never change once written, so the
        reads need no transaction, and the head is read only when ``size`` is beyond any size
        this process has seen (sizes never shrink): a proof is usually one round trip."""
        wanted: list[tuple[int, int]] = []

        def record(level: int, index: int) -> bytes:
            wanted.append((level, index))
            return bytes(merkle.HASH_SIZE)

        fn(record)
        with read_cursor(self._engine) as cur:
            if size > self._known_size:
                self._check_size(size, self._head_size(cur))
            hashes = dict(zip(wanted, self._fetch_cached(cur, wanted), strict=True))
        return fn(lambda level, index: hashes[(level, index)])

    def _require_in_log(self, size: int) -> None:
        """``ClientError`` if ``size`` is beyond the log; the head is read only for a size beyond
        any this process has seen (sizes never shrink)."""
        if size > self._known_size:
            with read_cursor(self._engine) as cur:
                self._check_size(size, self._head_size(cur))

    def _check_size(self, size: int, current: int) -> None:
        if not 0 <= size <= current:
            raise ClientError(f"tree size {size} is outside the log (size {current})")

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the tree of the first ``size`` entries (default: all)."""
        if size is None:
            return self.head()[1]
        if size < 0:
            raise ClientError(f"tree size {size} is outside the log")
        return self._from_tree(size, lambda p: merkle.range_hash(p, 0, size))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of size ``size`` (RFC 9162 §2.1.3)."""
        if size < 0:
            raise ClientError(f"tree size {size} is outside the log")
        if not 0 <= index < size:
            self._require_in_log(size)  # a size beyond the log is that error, as before
            raise ClientError(f"entry {index} is not in a tree of size {size}")
        return self._from_tree(size, lambda p: merkle.inclusion_path(p, index, size))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The proof that tree ``old_size`` is a prefix of tree ``new_size`` (RFC 9162 §2.1.4)."""
        if new_size < 0:
            raise ClientError(f"tree size {new_size} is outside the log")
        if not 0 <= old_size <= new_size:
            self._require_in_log(new_size)
            raise ClientError("the first size must not exceed the second")
        return self._from_tree(new_size, lambda p: merkle.consistency_path(p, old_size, new_size))

    # --- reading entries -----------------------------------------------------------------------

    def entry(self, index: int) -> LogEntry:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(EntryRow.idx, EntryRow.data, EntryRow.leaf_hash, *_COLUMNS).where(
                    EntryRow.log_id == self.log_id, EntryRow.idx == index
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no entry {index}")
        return _checked(row)

    def search(
        self, query: EntryQuery, *, limit: int = 100, cursor: int | None = None
    ) -> EntryPage:
        """Entries matching ``query`` in index order, ``limit`` at a time; pass the returned
        ``next_cursor`` back to continue."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ClientError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        stmt = select(EntryRow.idx, EntryRow.data, EntryRow.leaf_hash, *_COLUMNS).where(
            EntryRow.log_id == self.log_id
        )
        if query.subjects is not None:
            stmt = stmt.where(EntryRow.subject.in_(sorted(query.subjects)))
        for column, value in (
            (EntryRow.client, query.client),
            (EntryRow.service, query.service),
            (EntryRow.purpose, query.purpose),
            (EntryRow.decision, query.decision),
            (EntryRow.kind, query.kind),
            (EntryRow.consent_id, query.consent_id),
        ):
            if value is not None:
                stmt = stmt.where(column == value)
        if query.since is not None:
            stmt = stmt.where(EntryRow.time_us >= _time_us(query.since))
        if query.until is not None:
            stmt = stmt.where(EntryRow.time_us < _time_us(query.until))
        if cursor is not None:
            if cursor < 0:
                raise ClientError("bad cursor")
            stmt = stmt.where(EntryRow.idx >= cursor)
        stmt = stmt.order_by(EntryRow.idx).limit(limit + 1)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        # every row answered is checked: its columns matched the filter, its bytes must agree
        entries = tuple(_checked(r) for r in rows[:limit])
        return EntryPage(entries, rows[limit][0] if len(rows) > limit else None)

    def export(self, start: int = 0, end: int | None = None) -> Iterator[str]:
        """Entries ``[start, end)`` as JSON Lines (no trailing newline on each line):
        ``{"index": i, "leaf_hash": <base64, from the stored tree>, "columns": {<the stored
        search columns>}, "entry": {...}}``.

        The leaf hash is read from the tree nodes, not the entry row, so that an entry row edited
        in the database shows up as a mismatch at its own index, and the search columns are the
        stored ones, so that a column rewritten apart from its entry shows up too (see
        ``audit.verify``)."""
        end = self.size() if end is None else end
        if not 0 <= start <= end:
            raise ClientError("bad export range")
        pos = start
        while pos < end:
            stop = min(pos + EXPORT_CHUNK, end)
            yield from self._export_lines(pos, stop)
            pos = stop

    def _export_lines(self, start: int, stop: int) -> list[str]:
        """Entries ``[start, stop)`` as export lines, formatted by the database in one statement
        (entries and nodes are never rewritten: no snapshot needed). Rows it cannot format (bytes
        that are not UTF-8, only in a damaged or edited database) are formatted here instead."""
        params = (self.log_id, self.log_id, start, stop)
        dbapi_error: Any = self._engine.dialect.loaded_dbapi.Error
        try:
            with read_cursor(self._engine) as cur:
                cur.execute(self._read_sql.export_lines, params)
                rows = cur.fetchall()
        except (UnicodeDecodeError, dbapi_error):
            return self._export_lines_here(params)
        if self._read_sql.postgres:
            return [row[0] for row in rows]
        return [
            f'{{"index":{idx},"leaf_hash":{_hash_json(lh)},"columns":{rest}'
            for idx, lh, rest in rows
        ]

    def _export_lines_here(self, params: tuple[Any, ...]) -> list[str]:
        with read_cursor(self._engine) as cur:
            cur.execute(self._read_sql.export, params)
            rows = cur.fetchall()
        out = []
        for idx, lh, data, *stored in rows:
            lh_json = _hash_json(lh)
            cols = _COMPACT_JSON(columns_json(stored))
            text = bytes(data).decode("utf-8", errors="replace")
            out.append(f'{{"index":{idx},"leaf_hash":{lh_json},"columns":{cols},"entry":{text}}}')
        return out

    def entries(self, indices: Iterable[int]) -> dict[int, LogEntry]:
        """The entries at ``indices`` that exist, by index (each checked like ``entry``)."""
        wanted = sorted(set(indices))
        found: dict[int, LogEntry] = {}
        with self._engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(EntryRow.idx, EntryRow.data, EntryRow.leaf_hash, *_COLUMNS).where(
                        EntryRow.log_id == self.log_id, EntryRow.idx.in_(wanted[i : i + 500])
                    )
                ).all()
                found.update((int(r[0]), _checked(r)) for r in rows)
        return found

    # --- restricted entries (audit.restricted) --------------------------------------------------

    def release_due(self, now: datetime) -> list[int]:
        """Release every restricted entry whose time has come: append its release entry (subject,
        index, leaf hash, salt) and mark it released, in one transaction under the write lock
        (so two replicas never release one entry twice). Returns the release entries' indices.

        A stored row that does not match its entry's bytes (its release time, or a subject and
        salt that do not open the commitment) is never released: it stays overdue, and the
        auditors' listing (``restricted_entries``) names the problem."""
        when = _time_us(now)
        released: list[int] = []
        while self._any_due(when):
            batch = self._release_batch(when, now)
            released += batch
            if not batch:
                break  # only rows that must not be released are due: they stay overdue
        return released

    def _release_batch(self, when: int, now: datetime) -> list[int]:
        """Up to ``RELEASE_BATCH`` due entries, earliest due first, in one transaction."""
        self._ensure_head()
        sql = _append_sql(self._engine.dialect.paramstyle, self._engine.dialect.name)
        with self._engine.connect() as conn:
            conn.begin()
            self._begin_write(conn)
            with driver_cursor(conn) as cur:
                n, frontier = self._lock_head(cur, sql)
            # ordered as the due index is (no sort: the planner keeps to that index)
            due = conn.execute(
                select(
                    RestrictedRow.idx,
                    RestrictedRow.subject,
                    RestrictedRow.salt,
                    EntryRow.data,
                    RestrictedRow.release_us,
                )
                .join(
                    EntryRow,
                    (EntryRow.log_id == RestrictedRow.log_id) & (EntryRow.idx == RestrictedRow.idx),
                )
                .where(*self._due(when))
                .order_by(RestrictedRow.release_us)
                .limit(RELEASE_BATCH)
            ).all()
            ready = sorted(
                (int(i), str(subject), bytes(salt), bytes(data))
                for i, subject, salt, data, release_us in due
                if self._releasable(bytes(data), subject, bytes(salt), int(release_us), now)
            )
            if not ready:
                conn.rollback()
                return []
            prepared = [self._prepare(self._release_event(*r, now)) for r in ready]
            with driver_cursor(conn) as cur:
                self._append_at(cur, sql, n, frontier, prepared)
            for k, r in enumerate(ready):
                conn.execute(
                    update(RestrictedRow)
                    .where(RestrictedRow.log_id == self.log_id, RestrictedRow.idx == r[0])
                    .values(released_idx=n + k)
                )
            conn.commit()
        self._known_size = max(self._known_size, n + len(prepared))
        return list(range(n, n + len(prepared)))

    def _due(self, when: int) -> tuple[Any, ...]:
        return (
            RestrictedRow.log_id == self.log_id,
            RestrictedRow.released_idx.is_(None),
            RestrictedRow.release_us <= when,
        )

    def _any_due(self, when: int) -> bool:
        """The cheap check every citizen request makes first (one index lookup, no lock)."""
        with self._engine.connect() as conn:
            found = conn.execute(select(RestrictedRow.idx).where(*self._due(when)).limit(1))
            return found.first() is not None

    @staticmethod
    def _row_problem(data: bytes, subject: str, salt: bytes, release_us: int) -> str | None:
        """What is wrong with a restricted row against its entry's signed bytes, if anything."""
        try:
            record = json.loads(data)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not restricted.is_restricted(record):
            return "its entry is not a restricted entry"
        until = restricted.restricted_until(record)
        if until is None or _time_us(until) != release_us:
            return "its stored release time is not the one its signed bytes hold"
        if restricted.commitment(salt, subject) != record.get("subject_commitment"):
            return "its stored subject and salt do not open its entry's commitment"
        return None

    def _releasable(
        self, data: bytes, subject: str, salt: bytes, release_us: int, now: datetime
    ) -> bool:
        """Its row matches its entry's bytes, and the time the bytes hold has come."""
        if self._row_problem(data, subject, salt, release_us) is not None:
            return False
        until = restricted.restricted_until(json.loads(data))  # parsed: _row_problem read it
        return until is not None and until <= now

    def _release_event(
        self, idx: int, subject: str, salt: bytes, data: bytes, now: datetime
    ) -> AuditEvent:
        node = json.loads(data).get("node")
        return AuditEvent(
            time=now,
            node=node if isinstance(node, str) else self.log_id,
            kind="release",
            decision="info",
            subject=subject,
            extra=restricted.release_extra(idx, merkle.leaf_hash(data), salt),
        )

    def restricted_entries(
        self,
        now: datetime,
        *,
        overdue_only: bool = False,
        limit: int = 100,
        cursor: int | None = None,
    ) -> tuple[list[RestrictedEntry], int | None]:
        """Restricted entries in index order, for auditors (no subject, no salt): each with its
        release time read from its bytes, its release entry's index once released, and what is
        wrong with its stored row. ``overdue_only``: only those past their release time and
        not released (judged by the signed bytes, not by the stored copy). Returns a page and
        the cursor of the next one."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ClientError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        if cursor is not None and cursor < 0:
            raise ClientError("bad cursor")
        out: list[RestrictedEntry] = []
        pos = cursor or 0
        while True:
            stmt = (
                select(
                    EntryRow.idx,
                    EntryRow.data,
                    EntryRow.leaf_hash,
                    *_COLUMNS,
                    RestrictedRow.subject,
                    RestrictedRow.salt,
                    RestrictedRow.release_us,
                    RestrictedRow.released_idx,
                )
                .join(
                    EntryRow,
                    (EntryRow.log_id == RestrictedRow.log_id) & (EntryRow.idx == RestrictedRow.idx),
                )
                .where(RestrictedRow.log_id == self.log_id, RestrictedRow.idx >= pos)
                .order_by(RestrictedRow.idx)
                .limit(MAX_PAGE_SIZE)
            )
            if overdue_only:
                stmt = stmt.where(RestrictedRow.released_idx.is_(None))
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
            for row in rows:
                if len(out) == limit:
                    return out, int(row[0])
                found = self._restricted_entry(row)
                if not overdue_only or found.overdue(now):
                    out.append(found)
            if len(rows) < MAX_PAGE_SIZE:
                return out, None
            pos = int(rows[-1][0]) + 1

    def _restricted_entry(self, row: Sequence[Any]) -> RestrictedEntry:
        entry = _checked(row[: 3 + len(_COLUMNS)])
        subject, salt, release_us, released = row[3 + len(_COLUMNS) :]
        return RestrictedEntry(
            entry,
            restricted.restricted_until(entry.record),
            None if released is None else int(released),
            self._row_problem(entry.data, subject, bytes(salt), int(release_us)),
        )

    def released_originals(self, entries: Iterable[LogEntry]) -> dict[int, LogEntry]:
        """For each release entry among ``entries``, the restricted entry it releases, by the
        release entry's index (what the citizen's view shows in its place)."""
        wanted: dict[int, int] = {}
        for e in entries:
            try:
                found = restricted.parse_release(e.record)
            except restricted.ReleaseError as exc:
                raise LogIntegrityError(f"entry {e.index}: {exc}") from exc
            if found is not None:
                wanted[e.index] = found.releases
        originals = self.entries(wanted.values())
        missing = sorted(set(wanted.values()) - originals.keys())
        if missing:
            raise LogIntegrityError(f"entry {missing[0]}, which a release names, is missing")
        return {at: originals[index] for at, index in wanted.items()}

    def release_of(self, index: int) -> LogEntry | None:
        """The release entry of restricted entry ``index`` — read from the log and checked to
        name ``index`` — or None while it is not released."""
        with self._engine.connect() as conn:
            at = conn.execute(
                select(RestrictedRow.released_idx).where(
                    RestrictedRow.log_id == self.log_id, RestrictedRow.idx == index
                )
            ).scalar_one_or_none()
        if at is None:
            return None
        release = self.entry(int(at))
        try:
            found = restricted.parse_release(release.record)
        except restricted.ReleaseError:
            found = None
        if found is None or found.releases != index:
            raise LogIntegrityError(f"entry {at} is not the release of entry {index}")
        return release

    # --- checkpoints ---------------------------------------------------------------------------

    def sign_checkpoint(self, now: datetime) -> StoredCheckpoint:
        """Sign the current head as a checkpoint and store it in the history."""
        return self._store_checkpoint(now, only_if_grown=False)

    def publish_checkpoint(self, now: datetime) -> StoredCheckpoint:
        """What the node runs on an interval: sign a new checkpoint if the log grew since the
        latest one (or none exists), else return the latest."""
        return self._store_checkpoint(now, only_if_grown=True)

    def _store_checkpoint(self, now: datetime, *, only_if_grown: bool) -> StoredCheckpoint:
        """Read the head, sign it and store the checkpoint in ONE transaction holding this log's
        checkpoint lock (``_lock_checkpoints``): replicas sharing the database and the log key
        store checkpoints in the order of the sizes they sign, so the stored history never goes
        back to a smaller tree (a slower replica cannot store size 5 after another stored 7).

        On PostgreSQL that lock is not the head's: appends go on while the subject map is
        brought to the size being signed (the entries up to it never change, and
        ``_check_leaves`` holds them to the head read here), so a checkpoint's map work does
        not stall the exchanges appending meanwhile (docs/audit.md). A replica of an earlier
        version orders its checkpoints by the head's lock alone: one it stored in the meantime
        makes this attempt roll back and start again (``_CheckpointMoved``)."""
        when = _time_us(now)
        self._ensure_head()
        for _ in range(_CHECKPOINT_ATTEMPTS):
            try:
                return self._store_checkpoint_once(now, when, only_if_grown=only_if_grown)
            except _CheckpointMoved as moved:
                # the one stored meanwhile will do if it covers the head this attempt read
                found = self.latest_checkpoint() if only_if_grown else None
                if found is not None and found.size >= moved.size and self._signs_map(found.note):
                    return found
                continue
            except Exception as exc:
                # PostgreSQL broke a deadlock by failing this attempt (none is expected: the
                # attempt holds no row while it waits for the head; a lost one must not end a
                # publisher). The error comes from SQLAlchemy or the map's driver cursor.
                if _DEADLOCK not in (_sqlstate(exc), _sqlstate(getattr(exc, "orig", None))):
                    raise
        raise DatabaseUnavailable(
            "another writer kept storing checkpoints of this log meanwhile; retry later"
        )

    def _store_checkpoint_once(
        self, now: datetime, when: int, *, only_if_grown: bool
    ) -> StoredCheckpoint:
        with self._engine.connect() as conn:
            conn.begin()
            self._lock_checkpoints(conn)
            # the latest checkpoint, then the head, as committed when each is read (READ
            # COMMITTED): a checkpoint stored in between by a replica not taking this lock is
            # of a head no larger than the one read here (and ``_hold_head`` finds it)
            latest = self._latest(conn)
            found = conn.execute(
                select(HeadRow.size, HeadRow.root).where(HeadRow.log_id == self.log_id)
            ).first()
            if found is None:
                raise LogIntegrityError("the log has no head row")
            size, root = int(found[0]), bytes(found[1])
            if latest is not None and latest.size > size:
                # never store a smaller tree after a larger one: a head behind the latest
                # checkpoint means a damaged database, not a reason to contradict what was signed
                raise LogIntegrityError("the log head is behind its latest checkpoint")
            if (
                latest is not None
                and only_if_grown
                and latest.size == size
                and self._signs_map(latest.note)
            ):
                conn.rollback()
                return latest
            try:
                note = self._sign_with_map(conn, size, root, when, latest)
            except LogIntegrityError:
                if self._moved_since(conn, latest):
                    raise _CheckpointMoved(size) from None
                raise
        return StoredCheckpoint(size, root, now.astimezone(UTC), note)

    def _moved_since(self, conn: Connection, latest: StoredCheckpoint | None) -> bool:
        """After a failed attempt (its transaction rolled back): whether another checkpoint was
        stored since ``latest`` was read — the stored map then moved under the attempt, which
        is a race with a replica ordering checkpoints by the head's lock, not damage."""
        if conn.dialect.name != "postgresql":
            return False
        conn.rollback()
        now_latest = self._latest(conn)
        conn.rollback()
        return _note_of(now_latest) != _note_of(latest)

    def _hold_head(self, conn: Connection, latest: StoredCheckpoint | None, size: int) -> None:
        """On PostgreSQL, take the head's row lock before the checkpoint's first write (the
        map's new tree is computed by then; its member rows, the map's row and the checkpoint
        are written under it): a replica of an earlier version holds that lock through its
        whole checkpoint, so none of its is half-done now — and since this checkpoint holds no
        row it could want, the two never deadlock — and if one was stored since ``latest`` was
        read this attempt is rolled back rather than stored after it. Appends wait only for
        the writes and the commit."""
        if conn.dialect.name != "postgresql":
            return
        conn.execute(select(HeadRow.size).where(HeadRow.log_id == self.log_id).with_for_update())
        if _note_of(self._latest(conn)) != _note_of(latest):
            raise _CheckpointMoved(size)

    def _sign_with_map(
        self,
        conn: Connection,
        size: int,
        root: bytes,
        when: int,
        latest: StoredCheckpoint | None,
    ) -> str:
        """Advance the subject map (``audit.completeness``) to ``size`` in the checkpoint's
        transaction, so every checkpoint commits to exactly the entries about each subject up
        to its size; sign, store and commit. The map's tree in memory takes the new map's
        changes only once the transaction committed."""
        signed = None
        if latest is not None and self._signs_map(latest.note):
            signed = subject_map.MapState(latest.size, self._map_root(latest.note))
        held: list[bool] = []

        def hold() -> None:  # once, before the first write
            if not held:
                self._hold_head(conn, latest, size)
                held.append(True)

        update = self._advance_subject_map(conn, size, root, signed, hold)
        extension = f"{MAP_EXTENSION} {base64.b64encode(update.root).decode()}"
        note = sign_checkpoint(Checkpoint(self.origin, size, root, (extension,)), self._signer)
        hold()
        conn.execute(
            insert(CheckpointRow).values(
                log_id=self.log_id, size=size, root=root, time_us=when, note=note
            )
        )
        conn.commit()
        self._map_cache.commit(update)
        return note

    def _signs_map(self, note: str) -> bool:
        """Whether a checkpoint of this log commits to a subject map of the current format (one
        signed before the 16-ary map, ``audit_0007``, is signed again at the same size)."""
        try:
            self._map_root(note)
        except CompletenessError:
            return False
        return True

    def _fresh_checkpoint(self, now: datetime) -> StoredCheckpoint:
        """The latest checkpoint if it covers the whole log (two reads, no write lock), else a new
        one (``publish_checkpoint`` takes the checkpoint lock only then)."""
        latest = self.latest_checkpoint()
        if latest is not None and latest.size >= self.size() and self._signs_map(latest.note):
            return latest
        return self.publish_checkpoint(now)

    def _map_root(self, note: str) -> bytes:
        """The subject map root a checkpoint note of this log signs (the last one parsed is kept:
        every proof against the same checkpoint would verify the same signature again)."""
        if self._last_note is None or self._last_note[0] != note:
            try:
                checkpoint = verify_checkpoint(note, self.verifier())
            except NoteError as exc:  # a stored note this log's key did not sign
                raise LogIntegrityError(f"a stored checkpoint does not verify: {exc}") from exc
            self._last_note = (note, map_root_of(checkpoint))
        return self._last_note[1]

    def _advance_subject_map(
        self,
        conn: Connection,
        size: int,
        root: bytes,
        signed: subject_map.MapState | None,
        before_writes: Callable[[], None] | None = None,
    ) -> subject_map.TreeUpdate:
        """The subject map's root at ``size`` (``audit.subject_map.advance``, same transaction),
        from the map the latest checkpoint ``signed``, over entries whose leaf hashes lead to
        the head ``root`` being signed."""

        def check(start: int, leaves: Sequence[bytes]) -> None:
            self._check_leaves(conn, start, leaves, root)

        try:
            return subject_map.advance(
                conn,
                self.log_id,
                self.origin,
                size,
                self._map_cache,
                signed=signed,
                check_leaves=check,
                before_writes=before_writes,
            )
        except subject_map.MapIntegrityError as exc:
            raise LogIntegrityError(str(exc)) from exc

    def _check_leaves(
        self, conn: Connection, start: int, leaves: Sequence[bytes], root: bytes
    ) -> None:
        """Raise unless the stored tree's compact range of the first ``start`` entries, extended
        by ``leaves``, folds to ``root`` (the head being signed): entries the map reads back must
        be the ones the log's tree holds, not rows rewritten since they were appended."""
        coords = _compact_range(start)
        with driver_cursor(conn) as cur:
            hashes = self._fetch(cur, coords)
        frontier = [(level, h) for (level, _), h in zip(coords, hashes, strict=True)]
        merkle.extend_compact_range(frontier, leaves)
        if merkle.fold_compact_range([h for _, h in frontier]) != root:
            raise LogIntegrityError(
                f"the entries from {start} on are not the ones the log's tree holds"
            )

    def _latest(self, conn: Connection) -> StoredCheckpoint | None:
        row = conn.execute(
            select(
                CheckpointRow.size, CheckpointRow.root, CheckpointRow.time_us, CheckpointRow.note
            )
            .where(CheckpointRow.log_id == self.log_id)
            .order_by(CheckpointRow.id.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        return StoredCheckpoint(row[0], row[1], _EPOCH + row[2] * _US, row[3])

    def completeness(
        self, subjects: Iterable[str], now: datetime
    ) -> tuple[StoredCheckpoint, list[SubjectProof]]:
        """Proofs that the entries about each of ``subjects`` up to the latest checkpoint (signed
        now if the log grew) are exactly those the log holds (``audit.completeness``).

        The usual case — nothing restricted is due, the latest checkpoint covers the log and the
        map's tree in memory is at its root — is one read and the proofs from memory. Only the
        latest map is stored, so a checkpoint signed by another replica in between can leave the
        tree at another root: the tree is brought to the stored map (``subject_map.sync``) and
        the proofs are checked against the checkpoint's root here, read again when one fails."""
        wanted = sorted(set(subjects))
        when = _time_us(now)
        for _ in range(_PROOF_ATTEMPTS):
            with read_cursor(self._engine) as cur:
                cur.execute(self._read_sql.covering, (self.log_id, when, self.log_id, self.log_id))
                cp = self._covering_checkpoint(cur.fetchone())
            if cp is None or not self._signs_map(cp.note):
                # release what is due, sign what the log added (the write path)
                self.release_due(now)
                cp = self._fresh_checkpoint(now)
            read = self._proofs(self._map_root(cp.note), wanted)
            if read is not None:
                return cp, read
        raise LogIntegrityError("the subject map does not match the latest checkpoint")

    def _covering_checkpoint(self, row: Sequence[Any] | None) -> StoredCheckpoint | None:
        """The checkpoint of a ``_COVERING`` row when it covers the whole log and no restricted
        entry is due to be released; else None."""
        if row is None or row[1] is None or row[5]:
            return None
        self._known_size = max(self._known_size, int(row[0]))
        if int(row[1]) < int(row[0]):
            return None
        return StoredCheckpoint(int(row[1]), bytes(row[2]), _EPOCH + int(row[3]) * _US, row[4])

    def _proofs(self, root: bytes, wanted: Sequence[str]) -> list[SubjectProof] | None:
        """Each subject's proof from the map's tree in memory against ``root``, the tree first
        brought to the stored map if it is not at ``root``; None if it cannot be (the map moved
        on since the checkpoint, and the caller reads again). Each proof is checked against
        ``root`` before it is sent."""
        cache = self._map_cache
        with cache.lock:
            tree = cache.tree
        if tree is None or tree.root != root:
            with self._engine.connect() as conn:
                try:
                    tree = subject_map.sync(conn, self.log_id, self.origin, cache)
                except subject_map.MapIntegrityError as exc:
                    raise LogIntegrityError(str(exc)) from exc
        with cache.lock:
            if tree is None or tree.root != root:
                return None
            read = [subject_map.prove(tree, self.origin, s) for s in wanted]
        if all(subject_map.proof_root(p, own, self.origin) == root for p, own in read):
            return [p for p, _ in read]
        return None

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        found = self.checkpoints(limit=1)
        return found[0] if found else None

    def checkpoints(
        self, *, limit: int = 100, before_id: int | None = None
    ) -> list[StoredCheckpoint]:
        """The checkpoint history, newest first."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ClientError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        stmt = select(
            CheckpointRow.size, CheckpointRow.root, CheckpointRow.time_us, CheckpointRow.note
        ).where(CheckpointRow.log_id == self.log_id)
        if before_id is not None:
            stmt = stmt.where(CheckpointRow.id < before_id)
        stmt = stmt.order_by(CheckpointRow.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            StoredCheckpoint(size, root, _EPOCH + time_us * _US, note)
            for size, root, time_us, note in rows
        ]


class _CheckpointMoved(Exception):
    """A checkpoint attempt of the head at ``size`` met one stored meanwhile by a writer that
    orders checkpoints by the head's lock only (a replica of an earlier version): rolled back,
    and tried again unless the one stored covers ``size`` and will do."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _sqlstate(exc: object) -> str | None:
    found = getattr(exc, "sqlstate", None)
    return found if isinstance(found, str) else None


def _note_of(checkpoint: StoredCheckpoint | None) -> str | None:
    return None if checkpoint is None else checkpoint.note


def _hash_json(h: bytes | None) -> str:
    """A stored hash as the JSON an export line carries: base64 in quotes, or null."""
    return f'"{base64.b64encode(h).decode()}"' if h else "null"


def _compact_range(size: int) -> list[tuple[int, int]]:
    """The (level, index) of the perfect subtrees whose fold is the root of ``size`` leaves."""
    out: list[tuple[int, int]] = []
    pos = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def _as_audit_sink(log: TransparencyLog) -> AuditSink:
    """Static check (mypy): ``TransparencyLog`` implements ``exchange.ports.AuditSink``."""
    return log
