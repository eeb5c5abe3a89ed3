"""The subject map in the database: advanced as checkpoints are signed, read for proofs.

``advance`` runs inside the transaction that signs a checkpoint, under the log head's write lock
(``TransparencyLog._store_checkpoint``): it reads the entries the map does not cover yet — their
*bytes*, never the search columns, so a rewritten column cannot move an entry between subjects —
extends each subject's chain, rewrites the touched buckets and the paths above them, and returns
the new root for the checkpoint to sign. Appends never touch the map, so they cost what they cost
without it; a checkpoint costs O(new entries · ``MAP_DEPTH``) hashes and O(new entries ·
``MAP_DEPTH / STRATUM``) node writes.

Storage in strata (as transparency logs store tiles): only nodes at heights that are multiples of
``STRATUM`` (0, 8, 16, 24, 32) are stored; the heights between are recomputed from the stored
nodes of a *group* (the up to 256 nodes of one stored height under one node ``STRATUM`` above).
``read_proof`` assembles one subject's proof from its bucket's members and its four groups (two
queries, whatever the map's size). Only the latest map is kept, so a proof is always against the latest checkpoint; the
caller checks the assembled proof against that checkpoint's root and retries if a newer
checkpoint moved the map in between (see ``TransparencyLog.completeness``).

Trust assumption: this process trusts its own database, as ``audit.log`` does; citizens trust only
the signed root and check every proof themselves (``audit.completeness.verify_completeness``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, insert, select

from audit import merkle
from audit.completeness import (
    MAP_DEPTH,
    ZERO_CHAIN,
    Member,
    SubjectProof,
    bucket_hash,
    bucket_of,
    chain_step,
    empty_hashes,
    fold,
    subject_key,
)
from audit.store import EntryRow, SubjectMapRow
from exchange.db import driver_cursor

__all__ = [
    "EMPTY_MAP_ROOT",
    "STRATUM",
    "MapIntegrityError",
    "MapState",
    "advance",
    "map_state",
    "proof_root",
    "read_proof",
]

_EMPTY = empty_hashes()
EMPTY_MAP_ROOT = _EMPTY[MAP_DEPTH]
_LEAF_BASE = 1 << MAP_DEPTH
_BATCH = 500  # keys per IN list
_RANGES_PER_QUERY = 300  # SQLite allows 32766 parameters
STRATUM = 8
"""Stored heights are multiples of this (0, 8, 16, 24, 32): a proof reads ``MAP_DEPTH / STRATUM``
groups of nodes, a checkpoint writes that many per touched bucket instead of ``MAP_DEPTH + 1``."""
_READ_CHUNK = 5000  # entries read per query while advancing
_T = TypeVar("_T")


class MapIntegrityError(Exception):
    """The stored map or entries contradict themselves (mapped to ``LogIntegrityError``)."""


@dataclass(frozen=True, slots=True)
class MapState:
    size: int
    root: bytes


def _chunks(items: Sequence[_T], n: int = _BATCH) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


class _Sql:
    """Fixed SQL straight to the driver (as ``audit.log``'s append path): SQLAlchemy's
    per-statement compilation of large ``IN`` lists cost more than the statements."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def select_in(self, sql: str, log_id: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """``sql`` ends in ``IN``; the list is appended, ``_BATCH`` values at a time."""
        rows: list[tuple[Any, ...]] = []
        with driver_cursor(self._conn) as cur:
            for chunk in _chunks(values):
                marks = ", ".join(self._mark for _ in chunk)
                cur.execute(f"{self._sql(sql)} ({marks})", (log_id, *chunk))
                rows += cur.fetchall()
        return rows

    def select_ranges(
        self, log_id: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[Any, ...]]:
        """The stored nodes whose ids fall in any of ``ranges`` (inclusive), each range one index
        range scan (SQLite: the ranges joined as a table; an ``OR`` of many was planned badly)."""
        rows: list[tuple[Any, ...]] = []
        with driver_cursor(self._conn) as cur:
            if self._mark == "%s":
                cur.executemany(
                    _SELECT_RANGE_PG, [(log_id, lo, hi) for lo, hi in ranges], returning=True
                )
                while True:
                    rows += cur.fetchall()
                    if not cur.nextset():
                        return rows
            for chunk in _chunks(ranges, _RANGES_PER_QUERY):
                values = ", ".join("(?, ?)" for _ in chunk)
                flat = [bound for pair in chunk for bound in pair]
                cur.execute(f"WITH r(lo, hi) AS (VALUES {values}){_RANGES_JOIN}", (*flat, log_id))
                rows += cur.fetchall()
        return rows

    def upsert(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            with driver_cursor(self._conn) as cur:
                cur.executemany(self._sql(sql), rows)


_SELECT_MEMBERS = "SELECT key, count, chain FROM audit_subject_members WHERE log_id = ? AND key IN"
_SELECT_BUCKETS = (
    "SELECT key, bucket, count, chain FROM audit_subject_members WHERE log_id = ? AND bucket IN"
)
_SELECT_BUCKET = (
    "SELECT key, count, chain FROM audit_subject_members WHERE log_id = ? AND bucket IN"
)
_RANGES_JOIN = (
    " SELECT n.node_id, n.hash FROM r JOIN audit_subject_nodes n"
    " ON n.log_id = ? AND n.node_id BETWEEN r.lo AND r.hi"
)
# PostgreSQL: one simple range query per group, sent together (pipelined executemany): each is
# an index range scan whatever the planner's statistics say, where a join of the ranges with the
# table was planned, on a table not yet analyzed, as a scan of the whole log's map per range
_SELECT_RANGE_PG = (
    "SELECT node_id, hash FROM audit_subject_nodes WHERE log_id = %s AND node_id BETWEEN %s AND %s"
)
_UPSERT_NODES = (
    "INSERT INTO audit_subject_nodes (log_id, node_id, hash) VALUES (?, ?, ?) "
    "ON CONFLICT (log_id, node_id) DO UPDATE SET hash = excluded.hash"
)
_UPSERT_MEMBERS = (
    "INSERT INTO audit_subject_members (log_id, key, bucket, count, chain) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (log_id, key) DO UPDATE SET count = excluded.count, chain = excluded.chain"
)


def map_state(conn: Connection, log_id: str) -> MapState:
    row = conn.execute(
        select(SubjectMapRow.size, SubjectMapRow.root).where(SubjectMapRow.log_id == log_id)
    ).first()
    return MapState(0, EMPTY_MAP_ROOT) if row is None else MapState(int(row[0]), bytes(row[1]))


def _subject_of(data: bytes) -> str | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    subject = record.get("subject") if isinstance(record, dict) else None
    return subject if isinstance(subject, str) else None


def _member(key: Any, count: Any, chain: Any) -> Member:
    return Member(bytes(key), int(count), bytes(chain))


def _extend_chains(
    conn: Connection, log_id: str, origin: str, start: int, size: int
) -> dict[bytes, Member]:
    """Every subject with entries in ``[start, size)``, with its chain extended over them."""
    sql = _Sql(conn)
    members: dict[bytes, Member] = {}
    pos = start
    while pos < size:
        stop = min(pos + _READ_CHUNK, size)
        rows = conn.execute(
            select(EntryRow.idx, EntryRow.data)
            .where(EntryRow.log_id == log_id, EntryRow.idx >= pos, EntryRow.idx < stop)
            .order_by(EntryRow.idx)
        ).all()
        if [int(r[0]) for r in rows] != list(range(pos, stop)):
            raise MapIntegrityError(f"entries between {pos} and {stop} are missing")
        found = [(int(i), bytes(d), _subject_of(bytes(d))) for i, d in rows]
        keys = {subject_key(origin, s) for _, _, s in found if s is not None} - members.keys()
        for row in sql.select_in(_SELECT_MEMBERS, log_id, sorted(keys)):
            members[bytes(row[0])] = _member(*row)
        for index, data, subject in found:
            if subject is None:
                continue
            key = subject_key(origin, subject)
            old = members.get(key) or Member(key, 0, ZERO_CHAIN)
            chain = chain_step(old.chain, index, merkle.leaf_hash(data))
            members[key] = Member(key, old.count + 1, chain)
        pos = stop
    return members


def _bucket_members(
    sql: _Sql, log_id: str, changed: dict[bytes, Member]
) -> dict[int, list[Member]]:
    buckets: dict[int, list[Member]] = {}
    for member in changed.values():
        buckets.setdefault(bucket_of(member.key), []).append(member)
    for key, bucket, count, chain in sql.select_in(_SELECT_BUCKETS, log_id, sorted(buckets)):
        if bytes(key) not in changed:
            buckets[int(bucket)].append(_member(key, count, chain))
    return buckets


def _group_hashes(stored: dict[int, bytes], top: int, base_height: int) -> dict[int, bytes]:
    """Every node of the ``STRATUM``-high subtree under ``top`` (at ``base_height + STRATUM``)
    from its stored non-empty nodes at ``base_height``; absent nodes are empty subtrees."""
    known = dict(stored)
    level = set(stored)
    for height in range(base_height, base_height + STRATUM):
        empty = _EMPTY[height]
        parents = {node >> 1 for node in level}
        for parent in parents:
            known[parent] = merkle.node_hash(
                known.get(2 * parent, empty), known.get(2 * parent + 1, empty)
            )
        level = parents
    if not stored:
        known[top] = _EMPTY[base_height + STRATUM]
    return known


def _read_groups(sql: _Sql, log_id: str, tops: Sequence[int]) -> dict[int, dict[int, bytes]]:
    """The stored nodes of each group (the ``2^STRATUM`` nodes under each of ``tops``)."""
    groups: dict[int, dict[int, bytes]] = {top: {} for top in tops}
    for node, digest in sql.select_ranges(
        log_id, [(top << STRATUM, ((top + 1) << STRATUM) - 1) for top in tops]
    ):
        groups[int(node) >> STRATUM][int(node)] = bytes(digest)
    return groups


def _rehash(sql: _Sql, log_id: str, buckets: dict[int, list[Member]]) -> bytes:
    """Rewrite the touched buckets and the stored nodes above them; return the new root.

    Only every ``STRATUM``-th height is stored (``audit.store``): for each stratum the stored
    nodes of the touched groups are read in one batch, the new ones overlaid, and each group is
    hashed up to the next stored height, which is what the next stratum rewrites."""
    changed = {_LEAF_BASE + b: bucket_hash(members) for b, members in buckets.items()}
    writes = dict(changed)
    for base_height in range(0, MAP_DEPTH, STRATUM):
        tops = sorted({node >> STRATUM for node in changed})
        groups = _read_groups(sql, log_id, tops)
        for node, digest in changed.items():
            groups[node >> STRATUM][node] = digest
        above = {top: _group_hashes(groups[top], top, base_height)[top] for top in tops}
        changed = above
        writes.update(above)
    sql.upsert(_UPSERT_NODES, [(log_id, node, writes[node]) for node in sorted(writes)])
    return changed[1]


def advance(conn: Connection, log_id: str, origin: str, size: int) -> bytes:
    """Bring the map up to log size ``size`` (inside the checkpoint's transaction); its root."""
    state = map_state(conn, log_id)
    if state.size > size:
        raise MapIntegrityError("the subject map is ahead of the log")
    if state.size == size:
        return state.root
    changed = _extend_chains(conn, log_id, origin, state.size, size)
    root = state.root
    if changed:
        sql = _Sql(conn)
        buckets = _bucket_members(sql, log_id, changed)
        sql.upsert(
            _UPSERT_MEMBERS,
            [(log_id, m.key, bucket_of(m.key), m.count, m.chain) for m in changed.values()],
        )
        root = _rehash(sql, log_id, buckets)
    conn.execute(delete(SubjectMapRow).where(SubjectMapRow.log_id == log_id))
    conn.execute(insert(SubjectMapRow).values(log_id=log_id, size=size, root=root))
    return root


def proof_root(proof: SubjectProof, own: Member | None, origin: str) -> bytes:
    """The root ``proof`` leads to with the subject's own stored member (the server's check)."""
    members = [*proof.others, *([own] if own is not None else [])]
    return fold(subject_key(origin, proof.subject), bucket_hash(members), proof.siblings)


def read_proof(
    conn: Connection, log_id: str, origin: str, subject: str
) -> tuple[SubjectProof, Member | None]:
    """The proof for ``subject`` from the stored map, and its own member (None when it has no
    entries) so the caller can check the proof against the root before sending it."""
    key = subject_key(origin, subject)
    bucket = bucket_of(key)
    sql = _Sql(conn)
    members = [_member(k, c, ch) for k, c, ch in sql.select_in(_SELECT_BUCKET, log_id, [bucket])]
    own = next((m for m in members if m.key == key), None)
    leaf = _LEAF_BASE + bucket
    tops = [leaf >> (base + STRATUM) for base in range(0, MAP_DEPTH, STRATUM)]
    groups = _read_groups(sql, log_id, tops)
    siblings: list[bytes] = []
    for base_height, top in zip(range(0, MAP_DEPTH, STRATUM), tops, strict=True):
        known = _group_hashes(groups[top], top, base_height)
        siblings += [
            known.get((leaf >> h) ^ 1, _EMPTY[h]) for h in range(base_height, base_height + STRATUM)
        ]
    others = tuple(m for m in members if m.key != key)
    return SubjectProof(subject, others, tuple(siblings)), own
