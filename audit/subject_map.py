"""The subject map in the database: advanced as checkpoints are signed, read for proofs.

``advance`` runs inside the transaction that signs a checkpoint, under the log head's write lock
(``TransparencyLog._store_checkpoint``): it takes the entries the map does not cover yet — from
their *bytes*, never the search columns, so a rewritten column cannot move an entry between
subjects: read back, or the leaf hash and subject this process derived from the bytes it
appended (``MapCache.remember``) — extends each subject's chain, rewrites the touched buckets and
the paths above them, and returns the new root for the checkpoint to sign. Appends write nothing
of the map; a checkpoint costs O(new entries · ``MAP_DEPTH``) hashes and O(new entries ·
(``MAP_DEPTH / STRATUM`` - 1)) node writes (on PostgreSQL one statement per table, over arrays).

Storage in strata (as transparency logs store tiles): only nodes at heights that are multiples of
``STRATUM`` (8, 16, 24, 32) are stored; the heights between are recomputed from the stored
nodes of a *group* (the up to 256 nodes of one stored height under one node ``STRATUM`` above).
Bucket hashes (height 0) are not stored either: a lowest group's are derived from the members
of its 256 buckets, read by bucket range (the map is sparse down there — 10⁵ subjects in 2^32
buckets leave ~0.006 other members in a subject's lowest group — so this reads the subject's
own member and, almost always, nothing else). ``read_proof`` assembles one subject's proof from
the members of its lowest group and its three stored groups (one statement, whatever the
map's size). Only the latest map is kept, so a proof is always against
the latest checkpoint; the caller checks the assembled proof against that checkpoint's root and
retries if a newer checkpoint moved the map in between (see ``TransparencyLog.completeness``).

The upper tree in memory (``MapCache``): heights ``CACHED_HEIGHT`` (16) to 32 are dense — every
touched bucket's path crosses them, and recomputing their groups was most of a checkpoint's
hashing — and small (at most 2^17 - 1 nodes, about 10 MB, whatever the number of subjects). The
process that advances the map keeps every node of them, addressed by the map's root: a
checkpoint rehashes only the changed paths through them (each shared ancestor once) and reads
only the groups below, all in one batch; a proof against that root reads only the members of
its lowest group and one group of nodes. A tree whose root is not the stored map's (another replica advanced the map, or the
checkpoint rolled back) is never used: ``advance`` rebuilds it from the stored nodes at height
16 and checks it leads to the stored root, and proofs read all three stored groups.

Trust assumption: this process trusts its own database, as ``audit.log`` does; citizens trust only
the signed root and check every proof themselves (``audit.completeness.verify_completeness``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256
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
    "MapCache",
    "MapIntegrityError",
    "MapState",
    "ProofQuery",
    "UpperTree",
    "advance",
    "map_state",
    "proof_query",
    "proof_root",
    "read_proof",
]

_EMPTY = empty_hashes()
EMPTY_MAP_ROOT = _EMPTY[MAP_DEPTH]
_LEAF_BASE = 1 << MAP_DEPTH
_BATCH = 500  # keys per IN list
_RANGES_PER_QUERY = 300  # SQLite allows 32766 parameters
STRATUM = 8
"""Stored heights are multiples of this but 0 (8, 16, 24, 32): a proof reads the members of one
lowest group and ``MAP_DEPTH / STRATUM - 1`` groups of nodes, a checkpoint writes that many
nodes per touched bucket instead of ``MAP_DEPTH + 1``."""
_READ_CHUNK = 5000  # entries read per query while advancing
_REMEMBERED = 100_000  # entries a process remembers having appended (``MapCache.remember``)
CACHED_HEIGHT = 2 * STRATUM
"""Heights from here up (16 … 32, at most 2^17 - 1 nodes) are kept in memory by the process that
advances the map (``MapCache``): they are the dense part, every touched bucket's path shares it."""
_UPPER_BASE = 1 << (MAP_DEPTH - CACHED_HEIGHT)  # heap number of the first node at CACHED_HEIGHT
_NODE = merkle.NODE_PREFIX
_T = TypeVar("_T")


class MapIntegrityError(Exception):
    """The stored map or entries contradict themselves (mapped to ``LogIntegrityError``)."""


@dataclass(frozen=True, slots=True)
class MapState:
    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class UpperTree:
    """Every node at heights ``CACHED_HEIGHT`` … ``MAP_DEPTH`` of the map whose root is ``root``,
    by heap number (``nodes[1]`` is the root; empty subtrees hold the empty hash). Never changed
    once built: a checkpoint builds a new one (copy on write), so readers need no lock."""

    root: bytes
    nodes: list[bytes]


class MapCache:
    """What this process holds of the map between checkpoints.

    ``tree``: the upper tree of the map this process last computed, addressed by its root. It is
    used only for a map whose root is the same, the stored map's (``advance``) or the
    checkpoint's (``read_proof``); the root commits to every node, so a tree left from a
    rolled-back checkpoint, another replica's newer map or another database is never used, only
    rebuilt (``advance``) or passed over (proofs read the groups from the database).

    The entries this process appended (``remember``, after their transaction committed): the
    leaf hash and subject of each, computed from the bytes it wrote, so ``advance`` needs not
    read them back and parse them again. Entries another replica appended, or any this process
    no longer holds, are read from the database as before."""

    def __init__(self) -> None:
        self.tree: UpperTree | None = None
        self._appended: dict[int, tuple[bytes, str | None]] = {}

    def matching(self, root: bytes) -> UpperTree | None:
        tree = self.tree
        return tree if tree is not None and tree.root == root else None

    def remember(self, start: int, entries: Sequence[tuple[bytes, str | None]]) -> None:
        """``(leaf hash, subject)`` of the committed entries ``start, start + 1, …``."""
        if len(self._appended) + len(entries) > _REMEMBERED:
            self._appended.clear()  # a process that appends but never checkpoints
        for index, entry in enumerate(entries, start):
            self._appended[index] = entry

    def recall(self, start: int, stop: int) -> list[tuple[bytes, str | None]] | None:
        """The remembered entries ``[start, stop)``, or None unless every one is."""
        found = [self._appended.get(index) for index in range(start, stop)]
        return None if None in found else found  # type: ignore[return-value]

    def forget(self, start: int, stop: int) -> None:
        for index in range(start, stop):
            self._appended.pop(index, None)


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

    def group_members(
        self, log_id: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[Any, ...]]:
        """``(key, bucket, count, chain)`` of every member whose bucket falls in any of
        ``ranges`` (inclusive): the members of whole groups of buckets, each range one index range
        scan on ``(log_id, bucket)`` (as ``select_ranges``)."""
        rows: list[tuple[Any, ...]] = []
        with driver_cursor(self._conn) as cur:
            if self._mark == "%s":
                cur.execute(
                    _SELECT_MEMBER_RANGES_PG,
                    ([lo for lo, _ in ranges], [hi for _, hi in ranges], log_id),
                    binary=True,
                )
                return list(cur.fetchall())
            for chunk in _chunks(ranges, _RANGES_PER_QUERY):
                values = ", ".join("(?, ?)" for _ in chunk)
                flat = [bound for pair in chunk for bound in pair]
                cur.execute(f"WITH r(lo, hi) AS (VALUES {values}){_MEMBERS_JOIN}", (*flat, log_id))
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
                cur.execute(
                    _SELECT_RANGES_PG,
                    ([lo for lo, _ in ranges], [hi for _, hi in ranges], log_id),
                    binary=True,
                )
                return list(cur.fetchall())
            for chunk in _chunks(ranges, _RANGES_PER_QUERY):
                values = ", ".join("(?, ?)" for _ in chunk)
                flat = [bound for pair in chunk for bound in pair]
                cur.execute(f"WITH r(lo, hi) AS (VALUES {values}){_RANGES_JOIN}", (*flat, log_id))
                rows += cur.fetchall()
        return rows

    def upsert_nodes(self, log_id: str, nodes: dict[int, bytes]) -> None:
        """Write ``nodes`` (heap number: hash); PostgreSQL: one statement (``_UPSERT_NODES_PG``)."""
        ids = sorted(nodes)
        with driver_cursor(self._conn) as cur:
            if self._mark == "%s":
                packed = b"".join(nodes[i] for i in ids)
                cur.execute(_UPSERT_NODES_PG, (log_id, packed, _int_array(ids)))
            else:
                cur.executemany(_UPSERT_NODES, [(log_id, i, nodes[i]) for i in ids])

    def upsert_members(self, log_id: str, members: Sequence[Member]) -> None:
        """Write ``members`` (with their buckets); PostgreSQL: one statement
        (``_UPSERT_MEMBERS_PG``)."""
        ordered = sorted(members, key=lambda m: m.key)
        with driver_cursor(self._conn) as cur:
            if self._mark == "%s":
                buckets = _int_array([bucket_of(m.key) for m in ordered])
                counts = _int_array([m.count for m in ordered])
                keys, chains = b"".join(m.key for m in ordered), b"".join(m.chain for m in ordered)
                cur.execute(_UPSERT_MEMBERS_PG, (log_id, buckets, counts, keys, chains))
            else:
                cur.executemany(
                    _UPSERT_MEMBERS,
                    [(log_id, m.key, bucket_of(m.key), m.count, m.chain) for m in ordered],
                )


def _int_array(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of integers (parsed by the server in one go)."""
    return "{" + ",".join(map(str, values)) + "}"


_MEMBERS_JOIN = (
    " SELECT m.key, m.bucket, m.count, m.chain FROM r JOIN audit_subject_members m"
    " ON m.log_id = ? AND m.bucket BETWEEN r.lo AND r.hi"
)
_SELECT_MEMBER_RANGES_PG = (
    "SELECT m.key, m.bucket, m.count, m.chain FROM unnest(%b::bigint[], %b::bigint[]) AS r(lo, hi)"
    " CROSS JOIN LATERAL (SELECT key, bucket, count, chain FROM audit_subject_members"
    " WHERE log_id = %s AND bucket BETWEEN r.lo AND r.hi OFFSET 0) AS m"
)
_RANGES_JOIN = (
    " SELECT n.node_id, n.hash FROM r JOIN audit_subject_nodes n"
    " ON n.log_id = ? AND n.node_id BETWEEN r.lo AND r.hi"
)
# PostgreSQL: the ranges as arrays, each one index range scan under a LATERAL join; OFFSET 0 keeps
# the planner from flattening it into a plain join, which it planned, on a table not yet
# analyzed, as a scan of the whole log's map per range (measured: 0.98 s instead of 0.8 ms for
# 300 ranges). One statement, one round trip, however many groups. Arrays are sent in binary
# (``%b``): psycopg's text format escapes every element with a regular expression.
_SELECT_RANGES_PG = (
    "SELECT n.node_id, n.hash FROM unnest(%b::bigint[], %b::bigint[]) AS r(lo, hi)"
    " CROSS JOIN LATERAL (SELECT node_id, hash FROM audit_subject_nodes"
    " WHERE log_id = %s AND node_id BETWEEN r.lo AND r.hi OFFSET 0) AS n"
)
_UPSERT_NODES = (
    "INSERT INTO audit_subject_nodes (log_id, node_id, hash) VALUES (?, ?, ?) "
    "ON CONFLICT (log_id, node_id) DO UPDATE SET hash = excluded.hash"
)
_UPSERT_MEMBERS = (
    "INSERT INTO audit_subject_members (log_id, key, bucket, count, chain) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (log_id, key) DO UPDATE SET count = excluded.count, chain = excluded.chain"
)
# PostgreSQL upserts: the hashes of all rows sent as one packed bytea (cut in 32-byte slices by
# the server) and the integers as one array literal, so no value is dumped one by one in Python
# (psycopg's array dumper loops over the elements: ~5 ms a checkpoint for ~2,000 rows)
_UPSERT_NODES_PG = (
    "INSERT INTO audit_subject_nodes (log_id, node_id, hash)"
    " SELECT %s, u.n, substring(%b::bytea FROM u.i::int * 32 - 31 FOR 32)"
    " FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(n, i)"
    " ON CONFLICT (log_id, node_id) DO UPDATE SET hash = excluded.hash"
)
_UPSERT_MEMBERS_PG = (
    "INSERT INTO audit_subject_members (log_id, key, bucket, count, chain)"
    " SELECT %s, substring(p.k FROM u.i::int * 32 - 31 FOR 32), u.b, u.c,"
    " substring(p.ch FROM u.i::int * 32 - 31 FOR 32)"
    " FROM unnest(%s::bigint[], %s::bigint[]) WITH ORDINALITY AS u(b, c, i),"
    " (SELECT %b::bytea AS k, %b::bytea AS ch) AS p"
    " ON CONFLICT (log_id, key) DO UPDATE SET count = excluded.count, chain = excluded.chain"
)
_PROOF_MEMBERS = (
    "SELECT key, bucket, count, chain FROM audit_subject_members"
    " WHERE log_id = ? AND bucket BETWEEN ? AND ?"
)
_PROOF_GROUP = (
    "SELECT NULL, node_id, NULL, hash FROM audit_subject_nodes"
    " WHERE log_id = ? AND node_id BETWEEN ? AND ?"
)


@functools.cache
def _proof_sql(groups: int, mark: str) -> str:
    """A fixed text per number of groups (PostgreSQL prepares a statement it sees repeatedly):
    the members of the bucket's lowest group ``(key, bucket, count, chain)``, then the stored
    groups' nodes ``(NULL, id, NULL, hash)``."""
    return " UNION ALL ".join([_PROOF_MEMBERS] + [_PROOF_GROUP] * groups).replace("?", mark)


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


def _bucket_range(bucket: int) -> tuple[int, int]:
    """The buckets of ``bucket``'s lowest group (the ``2^STRATUM`` buckets under one node at
    height ``STRATUM``), whose hashes are derived from their members, never stored."""
    first = bucket >> STRATUM << STRATUM
    return first, first + (1 << STRATUM) - 1


def _entries(
    conn: Connection, log_id: str, start: int, stop: int, cache: MapCache | None
) -> list[tuple[int, bytes, str | None]]:
    """``(index, leaf hash, subject)`` of the entries ``[start, stop)``: remembered by this
    process if it appended them all, else read back — their bytes, never the search columns."""
    recalled = None if cache is None else cache.recall(start, stop)
    if recalled is not None:
        return [(index, leaf, s) for index, (leaf, s) in enumerate(recalled, start)]
    rows = conn.execute(
        select(EntryRow.idx, EntryRow.data)
        .where(EntryRow.log_id == log_id, EntryRow.idx >= start, EntryRow.idx < stop)
        .order_by(EntryRow.idx)
    ).all()
    if [int(r[0]) for r in rows] != list(range(start, stop)):
        raise MapIntegrityError(f"entries between {start} and {stop} are missing")
    return [(int(i), merkle.leaf_hash(bytes(d)), _subject_of(bytes(d))) for i, d in rows]


def _extend_chains(
    conn: Connection, log_id: str, origin: str, start: int, size: int, cache: MapCache | None
) -> tuple[dict[bytes, Member], dict[int, list[Member]]]:
    """Every subject with entries in ``[start, size)``, with its chain extended over them; and
    every non-empty bucket of every touched lowest group with its members as they will be (one
    read per group, which also finds each subject's own stored member)."""
    sql = _Sql(conn)
    changed: dict[bytes, Member] = {}
    stored: dict[bytes, Member] = {}
    read: set[int] = set()
    for pos in range(start, size, _READ_CHUNK):
        found = _entries(conn, log_id, pos, min(pos + _READ_CHUNK, size), cache)
        keyed = [(i, leaf, subject_key(origin, s)) for i, leaf, s in found if s is not None]
        fresh = {bucket_of(key) >> STRATUM for _, _, key in keyed} - read
        ranges = [_bucket_range(group << STRATUM) for group in sorted(fresh)]
        for key, _, count, chain in sql.group_members(log_id, ranges):
            stored[bytes(key)] = _member(key, count, chain)
        read |= fresh
        for index, leaf, key in keyed:
            old = changed.get(key) or stored.get(key) or Member(key, 0, ZERO_CHAIN)
            changed[key] = Member(key, old.count + 1, chain_step(old.chain, index, leaf))
    buckets: dict[int, list[Member]] = {}
    for member in (stored | changed).values():
        buckets.setdefault(bucket_of(member.key), []).append(member)
    return changed, buckets


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


def _group_ranges(tops: Iterator[int] | Sequence[int]) -> list[tuple[int, int]]:
    return [(top << STRATUM, ((top + 1) << STRATUM) - 1) for top in tops]


def _fold(level: dict[int, bytes], stored: dict[int, bytes], base_height: int) -> dict[int, bytes]:
    """The new nodes ``STRATUM`` heights above ``level`` (the changed nodes at ``base_height``):
    one pass per height over the changed paths and the stored nodes of their groups, a path
    hashed once however many changed nodes share it."""
    known = dict(stored)
    known.update(level)
    for height in range(base_height, base_height + STRATUM):
        empty = _EMPTY[height]
        parents: dict[int, bytes] = {}
        for node, digest in known.items():
            parent = node >> 1
            if parent not in parents:
                if node & 1:
                    pair = known.get(node - 1, empty) + digest
                else:
                    pair = digest + known.get(node + 1, empty)
                parents[parent] = sha256(_NODE + pair).digest()
        known = parents
    return known


def _build_upper(sql: _Sql, log_id: str, root: bytes) -> UpperTree:
    """The upper tree from the stored nodes at ``CACHED_HEIGHT`` (one range read), checked
    against the stored map's root."""
    stored = {
        int(node): bytes(digest)
        for node, digest in sql.select_ranges(log_id, [(_UPPER_BASE, 2 * _UPPER_BASE - 1)])
    }
    empty = _EMPTY[CACHED_HEIGHT]
    nodes = [empty] * (2 * _UPPER_BASE)
    for node, digest in stored.items():
        nodes[node] = digest
    first = _UPPER_BASE
    for height in range(CACHED_HEIGHT, MAP_DEPTH):
        first >>= 1
        child_empty, empty = _EMPTY[height], _EMPTY[height + 1]
        for parent in range(first, 2 * first):
            left, right = nodes[2 * parent], nodes[2 * parent + 1]
            both_empty = left is child_empty and right is child_empty
            nodes[parent] = empty if both_empty else sha256(_NODE + left + right).digest()
    if nodes[1] != root:
        raise MapIntegrityError("the stored subject map does not lead to its root")
    return UpperTree(root, nodes)


def _update_upper(upper: UpperTree, level: dict[int, bytes], writes: dict[int, bytes]) -> UpperTree:
    """A new upper tree with the changed nodes at ``CACHED_HEIGHT`` (``level``) and their
    ancestors rehashed, each once; the stored heights among them are added to ``writes``."""
    nodes = list(upper.nodes)
    for node, digest in level.items():
        nodes[node] = digest
    dirty = {node >> 1 for node in level}
    for height in range(CACHED_HEIGHT + 1, MAP_DEPTH + 1):
        for parent in dirty:
            nodes[parent] = sha256(_NODE + nodes[2 * parent] + nodes[2 * parent + 1]).digest()
        if height % STRATUM == 0:
            writes.update((parent, nodes[parent]) for parent in dirty)
        dirty = {parent >> 1 for parent in dirty}
    return UpperTree(nodes[1], nodes)


def _rehash(
    sql: _Sql, log_id: str, buckets: dict[int, list[Member]], upper: UpperTree
) -> UpperTree:
    """Rewrite the stored nodes above the touched buckets; the new upper tree.

    ``buckets`` holds every non-empty bucket of every touched lowest group: their hashes are
    folded up to height ``STRATUM`` (bucket hashes are never stored, a group's are derived from
    its members). From there the stored nodes of every touched group at height ``STRATUM`` are
    read in one batch and the changed paths folded up with them; above ``CACHED_HEIGHT`` the
    cached upper tree supplies every sibling."""
    level = {_LEAF_BASE + b: bucket_hash(members) for b, members in buckets.items()}
    level = _fold(level, {}, 0)
    stored = {
        int(node): bytes(digest)
        for node, digest in sql.select_ranges(
            log_id, _group_ranges(sorted({node >> STRATUM for node in level}))
        )
    }
    writes = dict(level)
    level = _fold(level, stored, STRATUM)
    writes.update(level)
    tree = _update_upper(upper, level, writes)
    sql.upsert_nodes(log_id, writes)
    return tree


def _upper_for(sql: _Sql, log_id: str, root: bytes, cache: MapCache | None) -> UpperTree:
    found = None if cache is None else cache.matching(root)
    return found if found is not None else _build_upper(sql, log_id, root)


def advance(
    conn: Connection, log_id: str, origin: str, size: int, cache: MapCache | None = None
) -> bytes:
    """Bring the map up to log size ``size`` (inside the checkpoint's transaction); its root.
    ``cache`` holds the upper tree between checkpoints (the new one is put there before the
    transaction commits: if it rolls back, the stored root differs and the tree is rebuilt) and
    the entries this process appended since (``MapCache.remember``)."""
    state = map_state(conn, log_id)
    if state.size > size:
        raise MapIntegrityError("the subject map is ahead of the log")
    if state.size == size:
        return state.root
    changed, buckets = _extend_chains(conn, log_id, origin, state.size, size, cache)
    root = state.root
    if changed:
        sql = _Sql(conn)
        upper = _upper_for(sql, log_id, state.root, cache)
        sql.upsert_members(log_id, list(changed.values()))
        tree = _rehash(sql, log_id, buckets, upper)
        root = tree.root
        if cache is not None:
            cache.tree = tree
    if cache is not None:
        cache.forget(state.size, size)  # if this rolls back, they are read back next time
    conn.execute(delete(SubjectMapRow).where(SubjectMapRow.log_id == log_id))
    conn.execute(insert(SubjectMapRow).values(log_id=log_id, size=size, root=root))
    return root


def proof_root(proof: SubjectProof, own: Member | None, origin: str) -> bytes:
    """The root ``proof`` leads to with the subject's own stored member (the server's check)."""
    members = [*proof.others, *([own] if own is not None else [])]
    return fold(subject_key(origin, proof.subject), bucket_hash(members), proof.siblings)


@dataclass(frozen=True, slots=True)
class ProofQuery:
    """One subject's proof read: the statement, its parameters, and what assembles its rows.

    One statement reads the members of the bucket's lowest group (whose bucket hashes give the
    heights below ``STRATUM``) and the stored nodes of the groups above: three, or, given
    ``upper`` (the cached upper tree of the map the proof is checked against), the one below
    ``CACHED_HEIGHT``, whose siblings above come from ``upper``."""

    subject: str
    key: bytes
    upper: UpperTree | None
    sql: str
    params: tuple[Any, ...]

    def assemble(self, rows: Sequence[Sequence[Any]]) -> tuple[SubjectProof, Member | None]:
        """The proof, and the subject's own member (None when it has no entries) so the caller
        can check the proof against the root before sending it."""
        bucket = bucket_of(self.key)
        leaf = _LEAF_BASE + bucket
        bases = _stored_bases(self.upper)
        tops = [leaf >> (base + STRATUM) for base in bases]
        groups: dict[int, dict[int, bytes]] = {top: {} for top in tops}
        by_bucket: dict[int, list[Member]] = {}
        for row in rows:
            if row[0] is None:
                groups[int(row[1]) >> STRATUM][int(row[1])] = bytes(row[3])
            else:
                by_bucket.setdefault(int(row[1]), []).append(_member(row[0], row[2], row[3]))
        lowest = {_LEAF_BASE + b: bucket_hash(members) for b, members in by_bucket.items()}
        siblings: list[bytes] = []
        for base_height, top, group in zip(
            (0, *bases), (leaf >> STRATUM, *tops), (lowest, *groups.values()), strict=True
        ):
            known = _group_hashes(group, top, base_height)
            siblings += [
                known.get((leaf >> h) ^ 1, _EMPTY[h])
                for h in range(base_height, base_height + STRATUM)
            ]
        if self.upper is not None:
            nodes = self.upper.nodes
            siblings += [nodes[(leaf >> h) ^ 1] for h in range(CACHED_HEIGHT, MAP_DEPTH)]
        members = by_bucket.get(bucket, [])
        own = next((m for m in members if m.key == self.key), None)
        others = tuple(m for m in members if m.key != self.key)
        return SubjectProof(self.subject, others, tuple(siblings)), own


def _stored_bases(upper: UpperTree | None) -> range:
    """The heights of the stored groups a proof reads: ``STRATUM`` and up, to the top or to
    ``CACHED_HEIGHT`` when the upper tree is in memory (the lowest group comes from members)."""
    return range(STRATUM, MAP_DEPTH if upper is None else CACHED_HEIGHT, STRATUM)


def proof_query(
    mark: str, log_id: str, origin: str, subject: str, upper: UpperTree | None = None
) -> ProofQuery:
    """The read for ``subject``'s proof; ``mark`` is the driver's placeholder (``?``/``%s``)."""
    key = subject_key(origin, subject)
    leaf = _LEAF_BASE + bucket_of(key)
    bases = _stored_bases(upper)
    params: list[Any] = [log_id, *_bucket_range(bucket_of(key))]
    for lo, hi in _group_ranges([leaf >> (base + STRATUM) for base in bases]):
        params += [log_id, lo, hi]
    return ProofQuery(subject, key, upper, _proof_sql(len(bases), mark), tuple(params))


def read_proof(
    cur: Any, mark: str, log_id: str, origin: str, subject: str, upper: UpperTree | None = None
) -> tuple[SubjectProof, Member | None]:
    """``subject``'s proof read on the driver cursor ``cur`` (one statement, no transaction
    needed) and assembled (``ProofQuery``)."""
    query = proof_query(mark, log_id, origin, subject, upper)
    cur.execute(query.sql, query.params)
    return query.assemble(cur.fetchall())
