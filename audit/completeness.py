"""Completeness proofs: every entry about a citizen, and no other, up to a signed checkpoint.

Concept (after key transparency — CONIKS, Google's Key Transparency — applied to an audit log):
each checkpoint also commits to a *subject map*, a sparse Merkle tree keyed by subject, with one
leaf per subject that has entries. A subject's leaf holds how many entries are about that
subject and a hash chain over them in index order::

    key(s)    = SHA-256("onceonly subject map v1" 0x00 origin 0x00 s)
    chain_0   = 32 zero bytes
    chain_k   = SHA-256(0x04 ‖ chain_{k-1} ‖ uint64be(index_k) ‖ leaf_hash_k)
    member    = key ‖ uint64be(count) ‖ chain_count
    leaf      = SHA-256(0x03 ‖ member)
    empty     = 32 zero bytes
    node hash = SHA-256(0x05 ‖ child_0 ‖ child_1 ‖ … ‖ child_15)

The tree is 16-ary and *compact* (as Diem's Jellyfish Merkle tree): a key's path is its nibbles
(4 bits each) from the most significant, but a subtree holding exactly one member is that
member's leaf, wherever on the path it sits, and a subtree holding none is ``empty``; only
subtrees holding two members or more are interior nodes. A path is therefore about
log₁₆(subjects) + 1 long (≈ 5 at 10⁵ citizens), not 64. The map root is signed as the
checkpoint extension line ``subject-map-16 <base64 root>``.

A proof for subject ``s`` is, for each interior node on ``s``'s path from where it ends up to
the root, the 15 hashes of the node's other children in child order (``siblings``: 15 a level,
the deepest level first) and, when the path ends at another subject's leaf, that member (which
shows ``s`` has no leaf). The citizen recomputes ``count`` and ``chain`` from the entries they
were shown (their leaf hashes recomputed from the entry bytes), rebuilds the path and compares
with the signed root. So an entry about them that was deleted, re-pointed to another subject or
rewritten — or one that was never shown — makes the proof fail; an entry that is not about them
cannot be slipped in either.

Earlier checkpoints signed other formats, which a citizen's kept record may carry; they still
verify: ``subject-map`` (until ``audit_0007``: the same tree binary, ``SHA-256(0x01 ‖ left ‖
right)`` nodes, one sibling a level) and ``subjects`` (until ``audit_0006``, ``_legacy_root``).
The checkpoint, not the proof, says which format a proof is read in.

Why one root admits one answer per key although the verifier does not check the tree is compact:
leaves, interior nodes and ``empty`` are domain-separated (0x03, 0x05, no preimage), so two
proofs for one key against one root open the same interior nodes down the key's path and must
stop at the same node, which is either empty or one leaf (a member, which names its key). (The
binary format's interior nodes are prefixed 0x01, the 16-ary's 0x05: neither opens as the other.)

Privacy: the key is a hash of the subject pseudonym (already what entries carry), so a key reveals
no identity to anyone who does not already know the pseudonym; a proof for a subject with no
entries may show one other member (a key, a count and a chain), never whom it belongs to.

Trust assumption: none here — ``verify_completeness`` takes everything from the untrusted node and
trusts only a checkpoint already verified with the pinned log key.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit import merkle, restricted
from audit.checkpoint import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from exchange.canonical import canonical_json

__all__ = [
    "EMPTY",
    "KEY_BITS",
    "MAP_EXTENSION",
    "CompletenessError",
    "Member",
    "SubjectProof",
    "bit",
    "chain_step",
    "child_bounds",
    "compact_root",
    "encode_member",
    "fold",
    "map_root_of",
    "nibble",
    "subject_key",
    "verify_completeness",
    "verify_record",
]

MAP_EXTENSION = "subject-map-16"
BINARY_EXTENSION = "subject-map"
"""The binary compact map's line, signed until ``audit_0007`` (kept records still verify)."""
NODE_PREFIX = b"\x05"
ARITY = 16
LEVEL_SIBLINGS = ARITY - 1
KEY_NIBBLES = 64
KEY_DOMAIN = b"onceonly subject map v1\x00"
LEAF_PREFIX = b"\x03"
CHAIN_PREFIX = b"\x04"
ZERO_CHAIN = bytes(32)
EMPTY = bytes(32)
"""The hash of an empty subtree: no SHA-256 output is known to be all zeros."""
KEY_BITS = 256
"""A key is a SHA-256 output: no path is longer than its bits (binary) or nibbles (16-ary)."""
MAX_SIBLINGS = KEY_NIBBLES * LEVEL_SIBLINGS


class CompletenessError(Exception):
    """A completeness proof did not check; the message says which part."""


@dataclass(frozen=True, slots=True)
class Member:
    """One subject's slot: its key, how many entries are about it, and the chain over them."""

    key: bytes
    count: int
    chain: bytes

    def encode(self) -> bytes:
        return encode_member(self.key, self.count, self.chain)

    def leaf(self) -> bytes:
        """The member's leaf hash in the map."""
        return hashlib.sha256(LEAF_PREFIX + self.encode()).digest()


@dataclass(frozen=True, slots=True)
class SubjectProof:
    """What a node sends for one subject: the sibling hashes from where the subject's path ends
    up to the root (``siblings[0]`` is the deepest) and, when the path ends at another
    subject's leaf, that member (``other``)."""

    subject: str
    siblings: tuple[bytes, ...]
    other: Member | None = None
    legacy_others: tuple[Member, ...] | None = None
    """Set only for a proof of the earlier fixed-depth map (``_verify_legacy``): the other
    members of the subject's bucket."""

    def to_json(self) -> dict[str, object]:
        other = self.other
        if self.legacy_others is not None:
            return {
                "subject": self.subject,
                "others": [_member_json(m) for m in self.legacy_others],
                "siblings": [_b64(h) for h in self.siblings],
            }
        return {
            "subject": self.subject,
            "siblings": [_b64(h) for h in self.siblings],
            "other": None if other is None else _member_json(other),
        }

    @classmethod
    def from_json(cls, value: object) -> SubjectProof:
        """Parse an untrusted proof object; anything malformed is a ``CompletenessError``."""
        try:
            if not isinstance(value, dict) or not isinstance(value.get("subject"), str):
                raise TypeError("not a proof object")
            found = value.get("other")
            other = None if found is None else _parse_member(found)
            legacy = value.get("others")
            if legacy is not None and not isinstance(legacy, list):
                raise TypeError("not a list of members")
            if not isinstance(value["siblings"], list) or len(value["siblings"]) > MAX_SIBLINGS:
                raise ValueError(f"not a list of at most {MAX_SIBLINGS} hashes")
            siblings = tuple(_unb64(h) for h in value["siblings"])
            others = None if legacy is None else tuple(_parse_member(m) for m in legacy)
            subject: str = value["subject"]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CompletenessError("the completeness proof is malformed") from exc
        return cls(subject, siblings, other, others)


def _member_json(m: Member) -> dict[str, object]:
    return {"key": _b64(m.key), "count": m.count, "chain": _b64(m.chain)}


def _parse_member(value: object) -> Member:
    if not isinstance(value, dict):
        raise TypeError("not a member object")
    return Member(_unb64(value["key"]), _count(value["count"]), _unb64(value["chain"]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not base64 text")
    raw = base64.b64decode(value, validate=True)
    if len(raw) != merkle.HASH_SIZE:
        raise ValueError("not a 32-byte hash")
    return raw


def _count(value: object) -> int:
    if type(value) is not int or not 0 < value < 2**63:
        raise ValueError("not a positive count")
    return value


def encode_member(key: bytes, count: int, chain: bytes) -> bytes:
    """``member = key ‖ uint64be(count) ‖ chain``, the bytes a leaf hashes."""
    return key + count.to_bytes(8, "big") + chain


def subject_key(origin: str, subject: str) -> bytes:
    """The map key of ``subject`` in the log ``origin``."""
    return hashlib.sha256(
        KEY_DOMAIN + origin.encode() + b"\x00" + subject.encode("utf-8", "surrogatepass")
    ).digest()


def bit(key: bytes, depth: int) -> int:
    """The branch ``key``'s path takes below depth ``depth`` in the binary map (0: left)."""
    return key[depth >> 3] >> (7 - (depth & 7)) & 1


def nibble(key: bytes, depth: int) -> int:
    """The child (0–15) ``key``'s path takes below depth ``depth``: its nibbles from the most
    significant."""
    byte = key[depth >> 1]
    return byte & 15 if depth & 1 else byte >> 4


def node_hash(children: bytes) -> bytes:
    """An interior node's hash from its 16 children's hashes (512 bytes, in child order)."""
    return hashlib.sha256(NODE_PREFIX + children).digest()


def chain_step(chain: bytes, index: int, leaf_hash: bytes) -> bytes:
    """The chain after one more entry (its log index and leaf hash) about the subject."""
    return hashlib.sha256(CHAIN_PREFIX + chain + index.to_bytes(8, "big") + leaf_hash).digest()


def map_root_of(checkpoint: Checkpoint, extension: str = MAP_EXTENSION) -> bytes:
    """The subject map root a checkpoint signs (its ``subject-map`` extension line)."""
    for line in checkpoint.extensions:
        name, _, value = line.partition(" ")
        if name == extension:
            try:
                return _unb64(value)
            except (TypeError, ValueError, binascii.Error) as exc:
                raise CompletenessError("the checkpoint's subject map root is malformed") from exc
    raise CompletenessError("the checkpoint commits to no subject map")


def fold(key: bytes, end: bytes, siblings: Sequence[bytes]) -> bytes:
    """The root reached from ``end`` — the hash where ``key``'s path ends, at depth
    ``len(siblings) / 15`` — up through ``siblings`` (15 a level, the deepest level first)."""
    levels, rest = divmod(len(siblings), LEVEL_SIBLINGS)
    if rest:
        raise CompletenessError("the proof's sibling hashes are not 15 a level")
    node = end
    for level in range(levels):
        depth = levels - 1 - level
        others = siblings[level * LEVEL_SIBLINGS : (level + 1) * LEVEL_SIBLINGS]
        at = nibble(key, depth)
        node = node_hash(b"".join(others[:at]) + node + b"".join(others[at:]))
    return node


def _fold_binary(key: bytes, end: bytes, siblings: Sequence[bytes]) -> bytes:
    """``fold`` in the binary map (``subject-map``, until ``audit_0007``): one sibling a level."""
    node = end
    for depth in range(len(siblings) - 1, -1, -1):
        sibling = siblings[len(siblings) - 1 - depth]
        if bit(key, depth):
            node = merkle.node_hash(sibling, node)
        else:
            node = merkle.node_hash(node, sibling)
    return node


def child_bounds(ordered: Sequence[Member], lo: int, hi: int, depth: int) -> list[int]:
    """Where ``ordered[lo:hi]`` (sorted by key, sharing their first ``depth`` nibbles) split
    among a node's 16 children: child ``i`` holds ``ordered[bounds[i]:bounds[i + 1]]``."""
    bounds = [lo]
    for child in range(1, ARITY):
        bounds.append(
            bisect.bisect_left(ordered, child, bounds[-1], hi, key=lambda m: nibble(m.key, depth))
        )
    bounds.append(hi)
    return bounds


def compact_root(members: Iterable[Member]) -> bytes:
    """The root of the map holding ``members`` (the format above), computed from scratch: what
    ``audit verify`` compares with the root a checkpoint signs."""
    ordered = sorted(members, key=lambda m: m.key)

    def root(lo: int, hi: int, depth: int) -> bytes:
        if hi == lo:
            return EMPTY
        if hi - lo == 1:
            return ordered[lo].leaf()
        bounds = child_bounds(ordered, lo, hi, depth)
        return node_hash(b"".join(root(bounds[i], bounds[i + 1], depth + 1) for i in range(ARITY)))

    return root(0, len(ordered), 0)


def _path_end(key: bytes, proof: SubjectProof, member: Member | None, binary: bool) -> bytes:
    """The hash where ``key``'s path ends: its own leaf when it has entries (``member``), else
    empty or another member's leaf — one whose key shares the path so far but is not ``key``."""
    if member is not None:
        if proof.other is not None:
            raise CompletenessError("the proof shows another member where the subject's leaf is")
        return member.leaf()
    other = proof.other
    if other is None:
        return EMPTY
    if binary:
        apart = any(bit(other.key, d) != bit(key, d) for d in range(len(proof.siblings)))
    else:
        depth = len(proof.siblings) // LEVEL_SIBLINGS
        apart = any(nibble(other.key, d) != nibble(key, d) for d in range(depth))
    if other.key == key or apart:
        raise CompletenessError("the proof shows a member that cannot be where the path ends")
    return other.leaf()


def verify_completeness(
    checkpoint: Checkpoint, proof: SubjectProof, entries: Sequence[tuple[int, bytes]]
) -> None:
    """Raise ``CompletenessError`` unless ``entries`` — ``(index, leaf hash)`` of every entry
    about ``proof.subject`` the node showed, each recomputed by the caller from the entry bytes —
    are exactly the entries about that subject in the log up to ``checkpoint`` (already verified
    against the pinned log key)."""
    extension = _format_of(checkpoint, proof)
    root = map_root_of(checkpoint, extension)
    indices = [index for index, _ in entries]
    if indices != sorted(set(indices)) or any(not 0 <= i < checkpoint.size for i in indices):
        raise CompletenessError("the entries are not distinct entries of this checkpoint in order")
    if len(proof.siblings) > (KEY_BITS if extension == BINARY_EXTENSION else MAX_SIBLINGS):
        raise CompletenessError("the proof has more sibling hashes than a key's path has levels")
    key = subject_key(checkpoint.origin, proof.subject)
    chain = ZERO_CHAIN
    for index, leaf in entries:
        chain = chain_step(chain, index, leaf)
    member = Member(key, len(entries), chain) if entries else None
    if extension == _LEGACY:
        reached = _legacy_root(key, proof, member)
    elif extension == BINARY_EXTENSION:
        reached = _fold_binary(key, _path_end(key, proof, member, True), proof.siblings)
    else:
        reached = fold(key, _path_end(key, proof, member, False), proof.siblings)
    if reached != root:
        raise CompletenessError(
            f"the {len(entries)} entries shown are not all the entries about this subject up to "
            f"checkpoint {checkpoint.size}"
        )


_LEGACY = "subjects"
_LEGACY_DEPTH = 32


def _format_of(checkpoint: Checkpoint, proof: SubjectProof) -> str:
    """The map format ``proof`` is read in: the one ``checkpoint`` signs (the current one when
    it signs more than one line), the fixed-depth map's for a proof in its shape."""
    if proof.legacy_others is not None:
        return _LEGACY
    signed = {line.partition(" ")[0] for line in checkpoint.extensions}
    if MAP_EXTENSION not in signed and BINARY_EXTENSION in signed:
        return BINARY_EXTENSION
    return MAP_EXTENSION


def _legacy_root(key: bytes, proof: SubjectProof, member: Member | None) -> bytes:
    """The root a proof of the earlier map leads to, for records kept from before
    ``audit_0006`` (checkpoints signing ``subjects <root>``): a tree of fixed depth 32 whose
    leaves are buckets (a key's first 32 bits), a bucket hashing its members in key order as
    ``SHA-256(0x02 ‖ member ‖ …)``, an empty subtree as the hash of empty ones below it."""
    others = list(proof.legacy_others or ())
    bucket = int.from_bytes(key[:4], "big")
    if len(proof.siblings) != _LEGACY_DEPTH:
        raise CompletenessError("the proof has the wrong number of sibling hashes")
    if any(int.from_bytes(m.key[:4], "big") != bucket or m.key == key for m in others):
        raise CompletenessError("the proof's bucket holds a member that cannot be there")
    if len({m.key for m in others}) != len(others):
        raise CompletenessError("the proof's bucket repeats a member")
    members = sorted(others + ([member] if member is not None else []), key=lambda m: m.key)
    node = hashlib.sha256(b"\x02" + b"".join(m.encode() for m in members)).digest()
    for height, sibling in enumerate(proof.siblings):
        if bucket >> height & 1:
            node = merkle.node_hash(sibling, node)
        else:
            node = merkle.node_hash(node, sibling)
    return node


def verify_record(
    checkpoint_note: str,
    log_key: NoteVerifier,
    proofs: Sequence[SubjectProof],
    entries: Iterable[tuple[int, Mapping[str, Any]]],
) -> Checkpoint:
    """Check a citizen's whole record from one node: ``checkpoint_note`` signed by the *pinned*
    ``log_key``, and for every subject in ``proofs``, the ``entries`` shown (``(index, entry
    record)``, any order, later ones ignored) are all its entries up to that checkpoint.

    A released restricted entry (``audit.restricted``) is shown beside its release entry, which
    is the one about the subject: the release must name it by index and leaf hash and open its
    subject commitment. Returns the checkpoint; raises ``CompletenessError`` naming what
    failed."""
    try:
        cp = verify_checkpoint(checkpoint_note, log_key)
    except NoteError as exc:
        raise CompletenessError(
            f"the checkpoint is not signed by the pinned log key: {exc}"
        ) from exc
    by_subject: dict[str, list[tuple[int, bytes]]] = {p.subject: [] for p in proofs}
    if len(by_subject) != len(proofs):
        raise CompletenessError("the proofs repeat a subject")
    hidden: dict[int, tuple[Mapping[str, Any], bytes]] = {}
    releases: list[tuple[int, restricted.Release]] = []
    for index, record in sorted(entries, key=lambda e: e[0]):
        # the leaf hash comes from the entry's own bytes, never from what the node says it is
        try:
            leaf = merkle.leaf_hash(canonical_json(dict(record)))
        except (TypeError, ValueError, RecursionError) as exc:  # nested deeper than Python goes
            raise CompletenessError(f"entry {index} is not canonical JSON") from exc
        if restricted.is_restricted(record):
            hidden[index] = (record, leaf)  # about no one by its bytes: shown beside its release
            continue
        release = _release(index, record)
        if release is not None and release.subject in by_subject:
            releases.append((index, release))  # checked even after the checkpoint
        if index >= cp.size:
            continue  # after the checkpoint: not covered yet
        found = by_subject.get(str(record.get("subject")))
        if found is None:
            raise CompletenessError(f"entry {index} is not about any of the subjects proven")
        found.append((index, leaf))
    _check_releases(releases, hidden, cp.size)
    for proof in proofs:
        verify_completeness(cp, proof, by_subject[proof.subject])
    return cp


def _release(index: int, record: Mapping[str, Any]) -> restricted.Release | None:
    try:
        return restricted.parse_release(record)
    except restricted.ReleaseError as exc:
        raise CompletenessError(f"entry {index}: {exc}") from exc


def _check_releases(
    releases: Sequence[tuple[int, restricted.Release]],
    hidden: dict[int, tuple[Mapping[str, Any], bytes]],
    size: int,
) -> None:
    """Every release shown comes with the restricted entry it releases, and truly releases it;
    no restricted entry up to the checkpoint is shown without its release."""
    for index, release in releases:
        shown = hidden.pop(release.releases, None)
        if shown is None:
            raise CompletenessError(
                f"entry {index} releases entry {release.releases}, which was not shown"
            )
        try:
            restricted.check_release(release, index, *shown)
        except restricted.ReleaseError as exc:
            raise CompletenessError(f"entry {index}: {exc}") from exc
    stray = sorted(i for i in hidden if i < size)
    if stray:
        raise CompletenessError(f"entry {stray[0]} is restricted and no entry shown releases it")
