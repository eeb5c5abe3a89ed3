"""The subject map in the database: advanced as checkpoints are signed, read for proofs.

``advance`` runs inside the transaction that signs a checkpoint, under the log head's write lock
(``TransparencyLog._store_checkpoint``): it reads the entries the map does not cover yet — their
*bytes*, never the search columns, so a rewritten column cannot move an entry between subjects —
extends each subject's chain, rewrites the touched buckets and the paths above them, and returns
the new root for the checkpoint to sign. Appends never touch the map, so they cost what they cost
without it; a checkpoint costs O(new entries · ``MAP_DEPTH``) hashes and node writes.

``read_proof`` assembles one subject's proof from the stored nodes (``MAP_DEPTH`` lookups in one
query). Only the latest map is kept, so a proof is always against the latest checkpoint; the
caller checks the assembled proof against that checkpoint's root and retries if a newer
checkpoint moved the map in between (see ``TransparencyLog.completeness``).

Trust assumption: this process trusts its own database, as ``audit.log`` does; citizens trust only
the signed root and check every proof themselves (``audit.completeness.verify_completeness``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

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
from audit.store import EntryRow, SubjectMapRow, SubjectMemberRow, SubjectNodeRow

__all__ = [
    "EMPTY_MAP_ROOT",
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
_READ_CHUNK = 5000  # entries read per query while advancing


class MapIntegrityError(Exception):
    """The stored map or entries contradict themselves (mapped to ``LogIntegrityError``)."""


@dataclass(frozen=True, slots=True)
class MapState:
    size: int
    root: bytes


def _chunks(items: Sequence[object], n: int = _BATCH) -> Iterator[Sequence[object]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


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


def _load_members(conn: Connection, log_id: str, keys: Iterable[bytes]) -> dict[bytes, Member]:
    out: dict[bytes, Member] = {}
    for chunk in _chunks(list(keys)):
        for key, count, chain in conn.execute(
            select(SubjectMemberRow.key, SubjectMemberRow.count, SubjectMemberRow.chain).where(
                SubjectMemberRow.log_id == log_id, SubjectMemberRow.key.in_(chunk)
            )
        ):
            out[bytes(key)] = Member(bytes(key), int(count), bytes(chain))
    return out


def _extend_chains(
    conn: Connection, log_id: str, origin: str, start: int, size: int
) -> dict[bytes, Member]:
    """Every subject with entries in ``[start, size)``, with its chain extended over them."""
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
        keys = {subject_key(origin, s) for _, _, s in found if s is not None}
        members.update(_load_members(conn, log_id, keys - members.keys()))
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
    conn: Connection, log_id: str, changed: dict[bytes, Member]
) -> dict[int, list[Member]]:
    buckets: dict[int, list[Member]] = {}
    for member in changed.values():
        buckets.setdefault(bucket_of(member.key), []).append(member)
    for chunk in _chunks(sorted(buckets)):
        for key, bucket, count, chain in conn.execute(
            select(
                SubjectMemberRow.key,
                SubjectMemberRow.bucket,
                SubjectMemberRow.count,
                SubjectMemberRow.chain,
            ).where(SubjectMemberRow.log_id == log_id, SubjectMemberRow.bucket.in_(chunk))
        ):
            if bytes(key) not in changed:
                buckets[int(bucket)].append(Member(bytes(key), int(count), bytes(chain)))
    return buckets


def _load_nodes(conn: Connection, log_id: str, ids: Iterable[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for chunk in _chunks(sorted(ids)):
        for node_id, h in conn.execute(
            select(SubjectNodeRow.node_id, SubjectNodeRow.hash).where(
                SubjectNodeRow.log_id == log_id, SubjectNodeRow.node_id.in_(chunk)
            )
        ):
            out[int(node_id)] = bytes(h)
    return out


def _write_nodes(conn: Connection, log_id: str, nodes: dict[int, bytes]) -> None:
    for chunk in _chunks(sorted(nodes)):
        conn.execute(
            delete(SubjectNodeRow).where(
                SubjectNodeRow.log_id == log_id, SubjectNodeRow.node_id.in_(chunk)
            )
        )
    conn.execute(
        insert(SubjectNodeRow),
        [{"log_id": log_id, "node_id": i, "hash": h} for i, h in nodes.items()],
    )


def _write_members(conn: Connection, log_id: str, changed: dict[bytes, Member]) -> None:
    for chunk in _chunks(sorted(changed)):
        conn.execute(
            delete(SubjectMemberRow).where(
                SubjectMemberRow.log_id == log_id, SubjectMemberRow.key.in_(chunk)
            )
        )
    conn.execute(
        insert(SubjectMemberRow),
        [
            {
                "log_id": log_id,
                "key": m.key,
                "bucket": bucket_of(m.key),
                "count": m.count,
                "chain": m.chain,
            }
            for m in changed.values()
        ],
    )


def _rehash(conn: Connection, log_id: str, buckets: dict[int, list[Member]]) -> bytes:
    """Rewrite the touched buckets and every node above them; return the new root."""
    level = {_LEAF_BASE + b: bucket_hash(members) for b, members in buckets.items()}
    written = dict(level)
    for height in range(MAP_DEPTH):
        parents = {node >> 1 for node in level}
        missing = {c for p in parents for c in (2 * p, 2 * p + 1)} - level.keys()
        known = {**_load_nodes(conn, log_id, missing), **level}
        empty = _EMPTY[height]
        level = {
            p: merkle.node_hash(known.get(2 * p, empty), known.get(2 * p + 1, empty))
            for p in parents
        }
        written.update(level)
    _write_nodes(conn, log_id, written)
    return level[1]


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
        buckets = _bucket_members(conn, log_id, changed)
        _write_members(conn, log_id, changed)
        root = _rehash(conn, log_id, buckets)
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
    members = [
        Member(bytes(k), int(c), bytes(ch))
        for k, c, ch in conn.execute(
            select(SubjectMemberRow.key, SubjectMemberRow.count, SubjectMemberRow.chain).where(
                SubjectMemberRow.log_id == log_id, SubjectMemberRow.bucket == bucket
            )
        )
    ]
    own = next((m for m in members if m.key == key), None)
    path = [((_LEAF_BASE + bucket) >> h) ^ 1 for h in range(MAP_DEPTH)]
    stored = _load_nodes(conn, log_id, path)
    siblings = tuple(stored.get(node, _EMPTY[h]) for h, node in enumerate(path))
    others = tuple(m for m in members if m.key != key)
    return SubjectProof(subject, others, siblings), own
