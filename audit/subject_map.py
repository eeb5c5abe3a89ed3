"""The subject map: its members in the database, its tree in memory, advanced as checkpoints are
signed (the format is ``audit.completeness``'s compact sparse Merkle tree).

``advance`` runs inside the transaction that signs a checkpoint, under the log's checkpoint lock
(``TransparencyLog._store_checkpoint``; on PostgreSQL appends go on meanwhile): it takes the
entries the map does not cover yet — from their *bytes*, never the search columns, so a
rewritten column cannot move an entry between subjects: read back, or the leaf hash and subject
this process derived from the bytes it appended (``MapCache.remember``) — extends each touched
subject's chain, writes the touched members, and rehashes their paths in the tree, each shared
node once. A checkpoint over ``n``
new entries costs about ``n · (log₁₆(subjects) - log₁₆(n))`` node hashes (each over 16
children) and one member row per touched subject (on PostgreSQL one statement); no node is
written.

Only the members are stored (``audit_subject_members``; ``audit_subject_maps`` holds the size
and root): the tree is derived from them. A process keeps it in memory (``MapCache``, about 480
bytes a subject, measured with tracemalloc) and serves every proof from it, with no read of the
map. A tree is only used for the root it leads to: before a checkpoint advances the map and
before a proof is served against a root the tree is not at, ``sync`` brings it to the stored
map — by the members of the subjects of the entries in between (another replica advanced the
map) or, when that does not lead to the stored root or the process has no tree yet, rebuilt
from every member — and checks it leads to the stored root. A checkpoint's changes are applied
to the tree only once its transaction has committed (``MapCache.commit``); if it rolls back
they are dropped.

Trust assumption: this process trusts its own database, as ``audit.log`` does; citizens trust only
the signed root and check every proof themselves (``audit.completeness.verify_completeness``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, TypeVar

from sqlalchemy import Connection, select

from audit import merkle
from audit.completeness import (
    ARITY,
    EMPTY,
    LEAF_PREFIX,
    NODE_PREFIX,
    ZERO_CHAIN,
    Member,
    SubjectProof,
    chain_step,
    child_bounds,
    encode_member,
    fold,
    nibble,
    subject_key,
)
from audit.store import EntryRow
from exchange.db import driver_cursor

__all__ = [
    "EMPTY_MAP_ROOT",
    "LeafCheck",
    "MapCache",
    "MapIntegrityError",
    "MapState",
    "SubjectTree",
    "TreeUpdate",
    "advance",
    "map_state",
    "proof_root",
    "sync",
]

EMPTY_MAP_ROOT = EMPTY
_BATCH = 500  # keys per IN list
_READ_CHUNK = 5000  # entries read per query while advancing
_REMEMBERED = 100_000  # entries a process remembers having appended (``MapCache.remember``)
_REBUILD_GAP = 50_000  # entries behind: rebuild from every member rather than follow them
_T = TypeVar("_T")


class MapIntegrityError(Exception):
    """The stored map or entries contradict themselves (mapped to ``LogIntegrityError``)."""


@dataclass(frozen=True, slots=True)
class MapState:
    size: int
    root: bytes


@dataclass(slots=True)
class TreeUpdate:
    """A tree's changes (``SubjectTree.update``), applied once the checkpoint committed."""

    base: MapState
    size: int
    root: bytes
    nodes: dict[int, bytes | bytearray] = field(default_factory=dict)
    leaves: dict[int, bytes] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    """Leaves' places that became interior nodes (a new key's path went through)."""
    where: dict[bytes, int] = field(default_factory=dict)


_EMPTY_NODE = NODE_PREFIX + bytes(32 * ARITY)
"""What an interior node hashes before any child is set: child ``i``'s hash is at bytes
``1 + 32i`` to ``33 + 32i``."""


class SubjectTree:
    """The map's tree in memory: for every interior node the bytes it hashes (``0x05`` and its
    16 children's hashes, 513 bytes, so its hash is one SHA-256 call) and every leaf's member,
    by node number (the root is 1, a node's children ``16n`` to ``16n + 15``; a node at depth
    ``d`` is in ``[16^d, 2·16^d)``, so deeper nodes have larger numbers), and where each key's
    leaf is.

    An update rehashes each interior node on the changed members' paths once: about a quarter
    of the Python steps and dictionary lookups of a binary tree's update (measured:
    ``docs/performance.md``, issue #15). Members are held encoded (``Member.encode``, 72
    bytes): with ints and bytes only, none of the tree's dictionaries is tracked by Python's
    cycle collector, which would otherwise traverse every member of a long-lived node's map
    again and again."""

    __slots__ = ("_leaves", "_nodes", "_where", "root", "size")

    def __init__(self, size: int = 0) -> None:
        self.size = size
        self.root = EMPTY
        self._nodes: dict[int, bytes | bytearray] = {}
        self._leaves: dict[int, bytes] = {}
        self._where: dict[bytes, int] = {}

    @classmethod
    def build(cls, members: Iterable[Member], size: int) -> SubjectTree:
        """The tree of ``members`` (one pass over them sorted by key, each node hashed once)."""
        tree = cls(size)
        ordered = sorted(members, key=lambda m: m.key)
        tree.root = tree._build(ordered, 0, len(ordered), 0, 1) if ordered else EMPTY
        return tree

    def _build(self, members: list[Member], lo: int, hi: int, depth: int, node: int) -> bytes:
        if hi - lo == 1:
            self._leaves[node] = members[lo].encode()
            self._where[members[lo].key] = node
            return members[lo].leaf()
        bounds = child_bounds(members, lo, hi, depth)  # split on the next nibble
        hashed = NODE_PREFIX + b"".join(
            self._build(members, bounds[i], bounds[i + 1], depth + 1, ARITY * node + i)
            if bounds[i + 1] > bounds[i]
            else EMPTY
            for i in range(ARITY)
        )
        self._nodes[node] = hashed
        return sha256(hashed).digest()

    def encoded(self, key: bytes) -> bytes | None:
        """The member of ``key`` as ``Member.encode`` gives it, if it has a leaf."""
        node = self._where.get(key)
        return None if node is None else self._leaves[node]

    def update(self, members: Iterable[bytes], size: int) -> TreeUpdate:
        """This tree's changes with ``members`` (new or changed, each as ``Member.encode``
        gives it) put in; the tree is unchanged. The hot loop of a checkpoint: each interior
        node on the members' paths rehashed once, deepest first."""
        out = TreeUpdate(MapState(self.size, self.root), size, self.root)
        writes: dict[int, dict[int, bytes]] = {}  # interior node: its changed children's hashes
        new_where, where = out.where, self._where
        for member in members:
            key = member[:32]
            node = new_where.get(key) or where.get(key)
            if node is None:
                node = self._insert(member, key, out, writes)
                new_where[key] = node
            _place(out, writes, node, member)
        new, new_get, old_get = out.nodes, out.nodes.get, self._nodes.get
        for node in sorted(writes, reverse=True):  # children before their parent
            hashed = bytearray(new_get(node) or old_get(node) or _EMPTY_NODE)
            for child, digest in writes[node].items():
                hashed[1 + 32 * child : 33 + 32 * child] = digest
            new[node] = hashed  # never changed once stored: an update copies it
            if node == 1:
                out.root = sha256(hashed).digest()
            else:
                writes[node >> 4][node & 15] = sha256(hashed).digest()
        return out

    def _insert(
        self, member: bytes, key: bytes, out: TreeUpdate, writes: dict[int, dict[int, bytes]]
    ) -> int:
        """Where a new key's leaf goes: walk down to an empty node, or to another member's
        leaf, which then goes down with it to where their keys part."""
        leaves, nodes, new_leaves, new_nodes = self._leaves, self._nodes, out.leaves, out.nodes
        node, depth = 1, 0
        while True:
            if node in nodes or node in new_nodes:  # an interior node
                node, depth = ARITY * node + nibble(key, depth), depth + 1
                continue
            here = new_leaves.get(node) or leaves.get(node)
            if here is None:
                return node
            other = here[:32]
            new_leaves.pop(node, None)  # the leaf's place becomes an interior node
            out.gone.add(node)
            new_nodes[node] = _EMPTY_NODE
            while nibble(key, depth) == nibble(other, depth):
                node, depth = ARITY * node + nibble(key, depth), depth + 1
                new_nodes[node] = _EMPTY_NODE
            moved = ARITY * node + nibble(other, depth)
            out.where[other] = moved
            _place(out, writes, moved, here)
            return ARITY * node + nibble(key, depth)

    def apply(self, update: TreeUpdate) -> bool:
        """Apply ``update`` if it was computed on this tree as it is; False (nothing applied)
        otherwise."""
        if update.base != MapState(self.size, self.root):
            return False
        self._nodes.update(update.nodes)
        leaves = self._leaves
        for node in update.gone:
            leaves.pop(node, None)
        leaves.update(update.leaves)
        self._where.update(update.where)
        self.size, self.root = update.size, update.root
        return True

    def prove(self, key: bytes) -> tuple[tuple[bytes, ...], Member | None]:
        """The siblings of ``key``'s path (15 a level, the deepest level first) and the member
        of the leaf where it ends (``key``'s own, another's, or None: empty)."""
        nodes, leaves = self._nodes, self._leaves
        siblings: list[bytes] = []
        node = self._where.get(key)
        if node is not None:  # up from its own leaf
            own = _decode(leaves[node])
            while node > 1:
                siblings += _others(nodes[node >> 4], node & 15)
                node >>= 4
            return tuple(siblings), own
        path: list[tuple[int, int]] = []
        node, depth = 1, 0
        while node in nodes:
            path.append((node, nibble(key, depth)))
            node, depth = ARITY * node + path[-1][1], depth + 1
        for parent, child in reversed(path):
            siblings += _others(nodes[parent], child)
        here = leaves.get(node)
        return tuple(siblings), None if here is None else _decode(here)


def _others(hashed: bytes | bytearray, child: int) -> list[bytes]:
    """The hashes of a node's children but ``child``, in order, from what the node hashes."""
    return [bytes(hashed[1 + 32 * i : 33 + 32 * i]) for i in range(ARITY) if i != child]


def _decode(member: bytes) -> Member:
    return Member(*_fields(member))


def _fields(member: bytes) -> tuple[bytes, int, bytes]:
    """The key, count and chain of an encoded member (``encode_member``)."""
    return member[:32], int.from_bytes(member[32:40], "big"), member[40:]


def _place(out: TreeUpdate, writes: dict[int, dict[int, bytes]], node: int, member: bytes) -> None:
    """Put the encoded ``member``'s leaf at ``node``; its parent takes the leaf's hash and it
    and its ancestors are to be rehashed."""
    out.leaves[node] = member
    leaf = sha256(LEAF_PREFIX + member).digest()
    if node == 1:  # the only member: the leaf is the root
        out.root = leaf
        return
    parent = node >> 4
    slots = writes.get(parent)
    if slots is None:
        slots = writes[parent] = {}
        up = parent >> 4
        while up and up not in writes:  # a node is only added with all its ancestors
            writes[up] = {}
            up >>= 4
    slots[node & 15] = leaf


class MapCache:
    """What this process holds of the map: its tree (``SubjectTree``, changed and proven from
    under ``lock``; a checkpoint's changes are applied by ``commit`` once its transaction
    committed), and the entries this process appended (``remember``, after their transaction
    committed): the leaf hash and subject of each, computed from the bytes it wrote, so
    ``advance`` needs not read them back and parse them again. Entries another replica
    appended, or any this process no longer holds, are read from the database.

    The remembered entries have a lock of their own (``_entries``): this process's appends
    remember while a checkpoint recalls and forgets (a checkpoint does not hold the head's lock),
    and a recall must never see a leaf without its subject."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tree: SubjectTree | None = None
        self._entries = threading.Lock()
        self._leaf_of: dict[int, bytes] = {}
        self._subject_of: dict[int, str | None] = {}
        self._keys: dict[str, bytes] = {}

    def remember(self, start: int, entries: Sequence[tuple[bytes, str | None]]) -> None:
        """``(leaf hash, subject)`` of the committed entries ``start, start + 1, …`` (kept in
        two dicts of ints, bytes and strings, which the cycle collector does not track)."""
        with self._entries:
            if len(self._leaf_of) + len(entries) > _REMEMBERED:
                self._leaf_of.clear()  # a process that appends but never checkpoints
                self._subject_of.clear()
            for index, (leaf, subject) in enumerate(entries, start):
                self._leaf_of[index] = leaf
                self._subject_of[index] = subject

    def recall(self, start: int, stop: int) -> list[tuple[int, bytes, str | None]] | None:
        """``(index, leaf hash, subject)`` of the remembered entries ``[start, stop)``, or None
        unless every one is."""
        with self._entries:
            leaf_of, subject_of = self._leaf_of, self._subject_of
            if any(index not in leaf_of for index in range(start, stop)):
                return None
            return [(index, leaf_of[index], subject_of[index]) for index in range(start, stop)]

    def forget(self, start: int, stop: int) -> None:
        with self._entries:
            leaf_of = self._leaf_of
            if len(leaf_of) == stop - start and start in leaf_of and stop - 1 in leaf_of:
                # (most likely) exactly these: if not, those dropped are read back when needed
                leaf_of.clear()
                self._subject_of.clear()
                return
            for index in range(start, stop):
                leaf_of.pop(index, None)
                self._subject_of.pop(index, None)

    def key(self, origin: str, subject: str) -> bytes:
        """``subject_key``, remembered for up to ``_REMEMBERED`` subjects (one hash an entry
        less while the map advances; a dict of str and bytes, which the cycle collector does
        not track, unlike an ``lru_cache``'s links)."""
        found = self._keys.get(subject)
        if found is None:
            if len(self._keys) >= _REMEMBERED:
                self._keys.clear()
            found = self._keys[subject] = subject_key(origin, subject)
        return found

    def commit(self, update: TreeUpdate) -> None:
        """A checkpoint committed with ``update`` (``advance``): apply its changes to the tree,
        or drop a tree they do not fit (it is brought to the stored map when next used) unless
        it is at the new map already (a proof served in between brought it there)."""
        with self.lock:
            tree = self.tree
            if tree is None or tree.apply(update):
                return
            if MapState(tree.size, tree.root) != MapState(update.size, update.root):
                self.tree = None


def _chunks(items: Sequence[_T], n: int = _BATCH) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


def _is_pg(conn: Connection) -> bool:
    return conn.dialect.paramstyle != "qmark"


def _sql(conn: Connection, text: str) -> str:
    """``text`` with ``?`` placeholders in the driver's own style."""
    return text.replace("?", "%s") if _is_pg(conn) else text


def _read_members(conn: Connection, log_id: str, keys: Sequence[bytes] | None) -> list[Member]:
    """The stored members of ``keys`` (those that exist), or every member when None."""
    out: list[Member] = []
    with driver_cursor(conn) as cur:
        if keys is None:
            cur.execute(_sql(conn, f"{_SELECT_MEMBERS} WHERE log_id = ?"), (log_id,))
            return [_member(*row) for row in cur.fetchall()]
        if _is_pg(conn):
            cur.execute(f"{_SELECT_MEMBERS} {_BY_KEYS_PG}", (log_id, list(keys)), binary=True)
            return [_member(*row) for row in cur.fetchall()]
        for chunk in _chunks(keys):
            marks = ", ".join("?" for _ in chunk)
            cur.execute(
                f"{_SELECT_MEMBERS} WHERE log_id = ? AND key IN ({marks})", (log_id, *chunk)
            )
            out += [_member(*row) for row in cur.fetchall()]
    return out


def _upsert_members(conn: Connection, cur: Any, log_id: str, members: Iterable[bytes]) -> None:
    """Write ``members`` (``encode_member``), in key order, with ``cur`` (in ``conn``'s
    transaction); PostgreSQL: one statement (``_UPSERT_MEMBERS_PG``)."""
    ordered = [_fields(m) for m in sorted(members)]  # by key: each starts with its key
    if _is_pg(conn):
        counts = "{" + ",".join(str(count) for _, count, _ in ordered) + "}"
        keys = b"".join(key for key, _, _ in ordered)
        chains = b"".join(chain for _, _, chain in ordered)
        cur.execute(_UPSERT_MEMBERS_PG, (log_id, counts, keys, chains))
    else:
        cur.executemany(_UPSERT_MEMBERS, [(log_id, *fields) for fields in ordered])


_SELECT_MEMBERS = "SELECT key, count, chain FROM audit_subject_members"
_BY_KEYS_PG = "WHERE log_id = %s AND key = ANY(%b::bytea[])"
_UPSERT_MEMBERS = (
    "INSERT INTO audit_subject_members (log_id, key, count, chain) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (log_id, key) DO UPDATE SET count = excluded.count, chain = excluded.chain"
)
# PostgreSQL: the keys and chains of all rows sent as one packed bytea each (cut in 32-byte
# slices by the server) and the counts as one array literal, so no value is dumped one by one
# in Python (psycopg's array dumper loops over the elements)
_UPSERT_MEMBERS_PG = (
    "INSERT INTO audit_subject_members (log_id, key, count, chain)"
    " SELECT %s, substring(p.k FROM u.i::int * 32 - 31 FOR 32), u.c,"
    " substring(p.ch FROM u.i::int * 32 - 31 FOR 32)"
    " FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(c, i),"
    " (SELECT %b::bytea AS k, %b::bytea AS ch) AS p"
    " ON CONFLICT (log_id, key) DO UPDATE SET count = excluded.count, chain = excluded.chain"
)


def map_state(conn: Connection, log_id: str) -> MapState:
    with driver_cursor(conn) as cur:
        cur.execute(_sql(conn, _MAP_STATE), (log_id,))
        row = cur.fetchone()
    return MapState(0, EMPTY_MAP_ROOT) if row is None else MapState(int(row[0]), bytes(row[1]))


def _store_state(conn: Connection, cur: Any, log_id: str, state: MapState) -> None:
    cur.execute(_sql(conn, _STORE_STATE), (log_id, state.size, state.root))


_MAP_STATE = "SELECT size, root FROM audit_subject_maps WHERE log_id = ?"
_STORE_STATE = (
    "INSERT INTO audit_subject_maps (log_id, size, root) VALUES (?, ?, ?)"
    " ON CONFLICT (log_id) DO UPDATE SET size = excluded.size, root = excluded.root"
)


def _subject_of(data: bytes) -> str | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    subject = record.get("subject") if isinstance(record, dict) else None
    return subject if isinstance(subject, str) else None


def _member(key: Any, count: Any, chain: Any) -> Member:
    """A stored member, checked for the shape its leaf needs (a damaged row is an integrity
    failure, not an error from the hashing)."""
    member = Member(bytes(key), int(count), bytes(chain))
    if len(member.key) != 32 or len(member.chain) != 32 or not 0 < member.count < 2**63:
        raise MapIntegrityError("a stored member of the subject map is malformed")
    return member


@dataclass(slots=True)
class _Seen:
    """The leaf hashes of the entries a checkpoint's map takes, in order, and whether any was
    read back from the database (then they are checked against the log's head: ``advance``)."""

    leaves: list[bytes] = field(default_factory=list)
    read_back: bool = False


def _entries(
    conn: Connection, log_id: str, start: int, stop: int, cache: MapCache, seen: _Seen | None
) -> list[tuple[int, bytes, str | None]]:
    """``(index, leaf hash, subject)`` of the entries ``[start, stop)``: remembered by this
    process if it appended them all, else read back — their bytes, never the search columns."""
    found = _recalled_or_read(conn, log_id, start, stop, cache, seen)
    if seen is not None:
        seen.leaves += [leaf for _, leaf, _ in found]
    return found


def _recalled_or_read(
    conn: Connection, log_id: str, start: int, stop: int, cache: MapCache, seen: _Seen | None
) -> list[tuple[int, bytes, str | None]]:
    recalled = cache.recall(start, stop)
    if recalled is not None:
        return recalled
    if seen is not None:
        seen.read_back = True
    rows = conn.execute(
        select(EntryRow.idx, EntryRow.data)
        .where(EntryRow.log_id == log_id, EntryRow.idx >= start, EntryRow.idx < stop)
        .order_by(EntryRow.idx)
    ).all()
    if [int(r[0]) for r in rows] != list(range(start, stop)):
        raise MapIntegrityError(f"entries between {start} and {stop} are missing")
    return [(int(i), merkle.leaf_hash(bytes(d)), _subject_of(bytes(d))) for i, d in rows]


def _keyed_entries(
    conn: Connection,
    log_id: str,
    origin: str,
    start: int,
    stop: int,
    cache: MapCache,
    seen: _Seen | None = None,
) -> Iterator[list[tuple[int, bytes, bytes]]]:
    """``(index, leaf hash, key)`` of the entries about a subject in ``[start, stop)``, a chunk
    at a time."""
    for pos in range(start, stop, _READ_CHUNK):
        found = _entries(conn, log_id, pos, min(pos + _READ_CHUNK, stop), cache, seen)
        key = cache.key
        yield [(i, leaf, key(origin, s)) for i, leaf, s in found if s is not None]


def _extend_chains(
    conn: Connection,
    log_id: str,
    origin: str,
    start: int,
    size: int,
    cache: MapCache,
    tree: SubjectTree,
    seen: _Seen,
) -> dict[bytes, bytes]:
    """Every subject with entries in ``[start, size)``, by key, with its member (encoded)
    extended over them from its member in ``tree`` (brought to the stored map and checked
    against its root)."""
    extended: dict[bytes, tuple[int, bytes]] = {}  # key: count, chain (encoded once, below)
    for keyed in _keyed_entries(conn, log_id, origin, start, size, cache, seen):
        for index, leaf, key in keyed:
            found = extended.get(key)
            if found is None:  # the subject's first entry here: from its member in the tree
                old = tree.encoded(key)
                found = _fields(old)[1:] if old else (0, ZERO_CHAIN)
            count, chain = found
            extended[key] = (count + 1, chain_step(chain, index, leaf))
    return {key: encode_member(key, count, chain) for key, (count, chain) in extended.items()}


def sync(
    conn: Connection, log_id: str, origin: str, cache: MapCache, state: MapState | None = None
) -> SubjectTree | None:
    """This process's tree brought to the stored map ``state`` (read if not given), or None if
    no tree from the stored members leads to the stored root."""
    state = map_state(conn, log_id) if state is None else state
    with cache.lock:
        tree = cache.tree
    if tree is not None and MapState(tree.size, tree.root) == state:
        return tree
    if tree is not None and tree.size < state.size <= tree.size + _REBUILD_GAP:
        keys: set[bytes] = set()
        for keyed in _keyed_entries(conn, log_id, origin, tree.size, state.size, cache):
            keys.update(key for _, _, key in keyed)
        members = _read_members(conn, log_id, sorted(keys))
        update = tree.update([m.encode() for m in members], state.size)
        if update.root == state.root:
            with cache.lock:
                if tree.apply(update):
                    return tree
    rebuilt = SubjectTree.build(_read_members(conn, log_id, None), state.size)
    if rebuilt.root != state.root:
        return None
    with cache.lock:
        cache.tree = rebuilt
    return rebuilt


LeafCheck = Callable[[int, Sequence[bytes]], None]
"""``check(start, leaves)``: raise unless the log's entries from ``start`` on have exactly these
leaf hashes, as the log's head commits to them (``TransparencyLog._check_leaves``)."""


def advance(
    conn: Connection,
    log_id: str,
    origin: str,
    size: int,
    cache: MapCache,
    *,
    signed: MapState | None = None,
    check_leaves: LeafCheck | None = None,
    before_writes: Callable[[], None] | None = None,
) -> TreeUpdate:
    """Bring the map up to log size ``size`` (inside the checkpoint's transaction): the tree's
    changes, with the new root, for ``MapCache.commit`` once the transaction committed (nothing
    reaches the tree if it rolls back).

    ``signed`` is the map the latest checkpoint signed (None when none signs one of this
    format): the stored map must be that one — a map row or member edited in the database is
    an integrity failure, never the base of a new signed root — unless it is absent, when it is
    rebuilt from the entries. With no such checkpoint (none yet, or the latest signs an earlier
    format) a stored map was never signed as it is: it is deleted and rebuilt from the
    entries. Entries read back from the database (not remembered by this
    process) are checked with ``check_leaves`` before the map takes them, so a row rewritten
    before the checkpoint cannot move an entry between subjects while the log's tree keeps
    it. ``before_writes`` is called once before the first statement that writes (the tree's
    new nodes are computed before it): the caller takes the locks its writes must hold there,
    never holding a row of the map while it waits for one."""
    state = map_state(conn, log_id)
    if signed is not None and state != signed and state.size != 0:
        raise MapIntegrityError(
            "the stored subject map is not the one the latest checkpoint signed"
        )
    if signed is None and state.size != 0:
        if before_writes is not None:
            before_writes()
        state = _forget_unsigned_map(conn, log_id, cache)
    if state.size > size:
        raise MapIntegrityError("the subject map is ahead of the log")
    if state.size == size:
        return TreeUpdate(state, size, state.root)
    tree = sync(conn, log_id, origin, cache, state)
    if tree is None:
        raise MapIntegrityError("the stored subject map does not lead to its root")
    seen = _Seen()
    changed = _extend_chains(conn, log_id, origin, state.size, size, cache, tree, seen)
    if seen.read_back and check_leaves is not None:
        check_leaves(state.size, seen.leaves)
    update = tree.update(changed.values(), size)
    if before_writes is not None:
        before_writes()
    with _overlapped(conn) as cur:
        if changed:
            _upsert_members(conn, cur, log_id, changed.values())
        _store_state(conn, cur, log_id, MapState(size, update.root))
    cache.forget(state.size, size)  # if this rolls back, they are read back next time
    return update


def _forget_unsigned_map(conn: Connection, log_id: str, cache: MapCache) -> MapState:
    """Delete a stored map no checkpoint of this format signed (the latest signs an earlier
    format, or none): it is built again from the entries, which are checked against the head
    being signed, never carried into a root of its own (an attack run found a member edited
    while a log upgraded from the binary map signed into the new root)."""
    with driver_cursor(conn) as cur:
        cur.execute(_sql(conn, "DELETE FROM audit_subject_members WHERE log_id = ?"), (log_id,))
        cur.execute(_sql(conn, "DELETE FROM audit_subject_maps WHERE log_id = ?"), (log_id,))
    with cache.lock:
        cache.tree = None
    return MapState(0, EMPTY)


@contextlib.contextmanager
def _overlapped(conn: Connection) -> Iterator[Any]:
    """A cursor in ``conn``'s transaction whose statements, on PostgreSQL, are sent without
    waiting for their results (psycopg's pipeline mode): the server executes them while this
    process goes on; their results, and any error, are taken when the block ends. SQLite runs
    each statement as it comes."""
    with driver_cursor(conn) as cur:
        if not _is_pg(conn):
            yield cur
            return
        with conn.connection.driver_connection.pipeline():  # type: ignore[union-attr]
            yield cur


def proof_root(proof: SubjectProof, own: Member | None, origin: str) -> bytes:
    """The root ``proof`` leads to with the subject's own member (the server's check)."""
    end = own or proof.other
    return fold(
        subject_key(origin, proof.subject), EMPTY if end is None else end.leaf(), proof.siblings
    )


def prove(tree: SubjectTree, origin: str, subject: str) -> tuple[SubjectProof, Member | None]:
    """``subject``'s proof from ``tree`` and its own member (None when it has no entries); call
    with the cache's lock held."""
    key = subject_key(origin, subject)
    siblings, end = tree.prove(key)
    own = end if end is not None and end.key == key else None
    other = end if own is None else None
    return SubjectProof(subject, siblings, other), own
