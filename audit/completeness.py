"""Completeness proofs: every entry about a citizen, and no other, up to a signed checkpoint.

Concept (after key transparency — CONIKS, Google's Key Transparency — applied to an audit log):
each checkpoint also commits to a *subject map*, a sparse Merkle tree with one slot per subject.
A subject's slot holds how many entries are about that subject and a hash chain over them in
index order::

    key(s)      = SHA-256("onceonly subject map v1" 0x00 origin 0x00 s)
    chain_0     = 32 zero bytes
    chain_k     = SHA-256(0x04 ‖ chain_{k-1} ‖ uint64be(index_k) ‖ leaf_hash_k)
    member      = key ‖ uint64be(count) ‖ chain_count
    bucket hash = SHA-256(0x02 ‖ member ‖ member ‖ …)   (members sorted by key; empty: SHA-256(0x02))
    node hash   = SHA-256(0x01 ‖ left ‖ right)           (as RFC 9162 interior nodes)

The tree has ``MAP_DEPTH`` levels; a key's bucket is its first ``MAP_DEPTH`` bits read as a
big-endian integer, and a bucket holds every member whose key starts with those bits (almost
always one). The map root is signed as the checkpoint extension line ``subjects <base64 root>``.

A proof for subject ``s`` is the other members of its bucket and the ``MAP_DEPTH`` sibling
hashes from the bucket up. The citizen recomputes ``count`` and ``chain`` from the entries they
were shown (their leaf hashes recomputed from the entry bytes), rebuilds the bucket and the path,
and compares with the signed root. So an entry about them that was deleted, re-pointed to another
subject or rewritten — or one that was never shown — makes the proof fail; an entry that is not
about them cannot be slipped in either.

Privacy: the key is a hash of the subject pseudonym (already what entries carry), so a key reveals
no identity to anyone who does not already know the pseudonym; a proof shows the counts of the
other members of one bucket (with ``MAP_DEPTH`` = 32 and 10⁵ citizens, a bucket is shared with
probability < 10⁻⁴), never whom they belong to.

Trust assumption: none here — ``verify_completeness`` takes everything from the untrusted node and
trusts only a checkpoint already verified with the pinned log key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit import merkle, restricted
from audit.checkpoint import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from exchange.canonical import canonical_json

__all__ = [
    "MAP_DEPTH",
    "MAP_EXTENSION",
    "CompletenessError",
    "Member",
    "SubjectProof",
    "bucket_hash",
    "bucket_of",
    "chain_step",
    "empty_hashes",
    "fold",
    "map_root_of",
    "subject_key",
    "verify_completeness",
    "verify_record",
]

MAP_DEPTH = 32
MAP_EXTENSION = "subjects"
KEY_DOMAIN = b"onceonly subject map v1\x00"
BUCKET_PREFIX = b"\x02"
CHAIN_PREFIX = b"\x04"
ZERO_CHAIN = bytes(32)
_MEMBER_SIZE = 32 + 8 + 32


class CompletenessError(Exception):
    """A completeness proof did not check; the message says which part."""


@dataclass(frozen=True, slots=True)
class Member:
    """One subject's slot: its key, how many entries are about it, and the chain over them."""

    key: bytes
    count: int
    chain: bytes

    def encode(self) -> bytes:
        return self.key + self.count.to_bytes(8, "big") + self.chain


@dataclass(frozen=True, slots=True)
class SubjectProof:
    """What a node sends for one subject: the other members of its bucket and the siblings from
    the bucket up to the root (``siblings[0]`` is the bucket's sibling)."""

    subject: str
    others: tuple[Member, ...]
    siblings: tuple[bytes, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "others": [
                {"key": _b64(m.key), "count": m.count, "chain": _b64(m.chain)} for m in self.others
            ],
            "siblings": [_b64(h) for h in self.siblings],
        }

    @classmethod
    def from_json(cls, value: object) -> SubjectProof:
        """Parse an untrusted proof object; anything malformed is a ``CompletenessError``."""
        try:
            if not isinstance(value, dict) or not isinstance(value.get("subject"), str):
                raise TypeError("not a proof object")
            others = tuple(
                Member(_unb64(m["key"]), _count(m["count"]), _unb64(m["chain"]))
                for m in value["others"]
            )
            siblings = tuple(_unb64(h) for h in value["siblings"])
            subject: str = value["subject"]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CompletenessError("the completeness proof is malformed") from exc
        return cls(subject, others, siblings)


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


def subject_key(origin: str, subject: str) -> bytes:
    """The map key of ``subject`` in the log ``origin``."""
    return hashlib.sha256(
        KEY_DOMAIN + origin.encode() + b"\x00" + subject.encode("utf-8", "surrogatepass")
    ).digest()


def bucket_of(key: bytes) -> int:
    """The bucket (leaf position) of a key: its first ``MAP_DEPTH`` bits."""
    return int.from_bytes(key[: MAP_DEPTH // 8], "big")


def chain_step(chain: bytes, index: int, leaf_hash: bytes) -> bytes:
    """The chain after one more entry (its log index and leaf hash) about the subject."""
    return hashlib.sha256(CHAIN_PREFIX + chain + index.to_bytes(8, "big") + leaf_hash).digest()


def bucket_hash(members: Iterable[Member]) -> bytes:
    """The hash of a bucket: its members in key order (an empty bucket hashes no member)."""
    ordered = sorted(members, key=lambda m: m.key)
    return hashlib.sha256(BUCKET_PREFIX + b"".join(m.encode() for m in ordered)).digest()


def empty_hashes() -> list[bytes]:
    """``[h_0, …, h_MAP_DEPTH]``: the hash of an empty subtree of each height (0 = a bucket)."""
    out = [bucket_hash(())]
    for _ in range(MAP_DEPTH):
        out.append(merkle.node_hash(out[-1], out[-1]))
    return out


def map_root_of(checkpoint: Checkpoint) -> bytes:
    """The subject map root a checkpoint signs (its ``subjects`` extension line)."""
    for line in checkpoint.extensions:
        name, _, value = line.partition(" ")
        if name == MAP_EXTENSION:
            try:
                return _unb64(value)
            except (TypeError, ValueError, binascii.Error) as exc:
                raise CompletenessError("the checkpoint's subject map root is malformed") from exc
    raise CompletenessError("the checkpoint commits to no subject map")


def fold(key: bytes, bucket: bytes, siblings: Sequence[bytes]) -> bytes:
    """The root reached from ``key``'s bucket hash up through ``siblings`` (bucket level first)."""
    position = bucket_of(key)
    node = bucket
    for height, sibling in enumerate(siblings):
        if position >> height & 1:
            node = merkle.node_hash(sibling, node)
        else:
            node = merkle.node_hash(node, sibling)
    return node


def verify_completeness(
    checkpoint: Checkpoint, proof: SubjectProof, entries: Sequence[tuple[int, bytes]]
) -> None:
    """Raise ``CompletenessError`` unless ``entries`` — ``(index, leaf hash)`` of every entry
    about ``proof.subject`` the node showed, each recomputed by the caller from the entry bytes —
    are exactly the entries about that subject in the log up to ``checkpoint`` (already verified
    against the pinned log key)."""
    root = map_root_of(checkpoint)
    indices = [index for index, _ in entries]
    if indices != sorted(set(indices)) or any(not 0 <= i < checkpoint.size for i in indices):
        raise CompletenessError("the entries are not distinct entries of this checkpoint in order")
    if len(proof.siblings) != MAP_DEPTH:
        raise CompletenessError("the proof has the wrong number of sibling hashes")
    key = subject_key(checkpoint.origin, proof.subject)
    others = list(proof.others)
    if any(bucket_of(m.key) != bucket_of(key) or m.key == key for m in others):
        raise CompletenessError("the proof's bucket holds a member that cannot be there")
    if len({m.key for m in others}) != len(others):
        raise CompletenessError("the proof's bucket repeats a member")
    chain = ZERO_CHAIN
    for index, leaf in entries:
        chain = chain_step(chain, index, leaf)
    members = others + ([Member(key, len(entries), chain)] if entries else [])
    if fold(key, bucket_hash(members), proof.siblings) != root:
        raise CompletenessError(
            f"the {len(entries)} entries shown are not all the entries about this subject up to "
            f"checkpoint {checkpoint.size}"
        )


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
        except (TypeError, ValueError) as exc:
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
