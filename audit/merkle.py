"""The Merkle tree of the log: hashing, proofs and their verification (RFC 9162 §2.1).

SHA-256 with domain separation: a leaf hash is ``SHA-256(0x00 || entry bytes)`` and an interior
node ``SHA-256(0x01 || left || right)`` (§2.1.1), so an interior node can never be passed off as a
leaf (second-preimage attack). The empty tree's root is ``SHA-256("")``.

Trust assumption: none. The verifiers take a proof from an untrusted log and answer ``True`` only
when the proof binds the leaf (or the old tree) to the given root; malformed proofs (wrong
length, wrong element size, out-of-range indices) are simply ``False``.

Proof *generation* is written once, over a ``SubtreeHashes`` accessor that yields the hash of a
perfect subtree ``(level, index)`` (the leaves ``[index·2^level, (index+1)·2^level)``). The list
functions below back it with leaves in memory; ``audit.store`` backs it with the node hashes kept
in the database, so a proof for a log of millions of entries reads O(log n) stored hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeHashes = Callable[[int, int], bytes]
"""``perfect(level, index)``: the hash of the complete subtree of ``2**level`` leaves at ``index``."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || MTH(left) || MTH(right)) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k: the largest power of two with k < n (n ≥ 2), the split point of RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def extend_compact_range(stack: list[tuple[int, bytes]], hashes: Iterable[bytes]) -> None:
    """Push leaf hashes onto ``stack``, the compact range ``(level, hash)`` of the leaves before
    them, left to right: a binary counter of perfect subtrees (O(1) amortised per leaf)."""
    for h in hashes:
        level, cur = 0, h
        while stack and stack[-1][0] == level:
            cur = node_hash(stack.pop()[1], cur)
            level += 1
        stack.append((level, cur))


def root_from_leaf_hashes(hashes: Iterable[bytes]) -> bytes:
    """MTH over leaf hashes, iteratively (O(n) time, O(log n) memory): a binary counter of
    perfect subtrees, folded right to left at the end. Used by the offline verifier."""
    stack: list[tuple[int, bytes]] = []  # (level, hash) of the compact range, left to right
    extend_compact_range(stack, hashes)
    return fold_compact_range([h for _, h in stack])


def fold_compact_range(hashes: Sequence[bytes]) -> bytes:
    """The root of a tree given its compact range (perfect subtrees, largest first)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the entry bytes ``leaves`` (RFC 9162 §2.1.1)."""
    return root_from_leaf_hashes([leaf_hash(d) for d in leaves])


# --- proof generation over a subtree accessor ------------------------------------------------


def range_hash(perfect: SubtreeHashes, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range that the RFC recursion produces: ``start`` is a multiple of
    a power of two ≥ ``end - start``. It is the fold of O(log n) perfect subtrees."""
    parts: list[bytes] = []
    pos = start
    while pos < end:
        # the largest perfect subtree aligned at pos that fits in [pos, end)
        size = 1 << ((end - pos).bit_length() - 1)
        while pos % size:
            size >>= 1
        parts.append(perfect(size.bit_length() - 1, pos // size))
        pos += size
    return fold_compact_range(parts)


def inclusion_path(perfect: SubtreeHashes, index: int, size: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, bottom-up, for leaf ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    out: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            out.append(range_hash(perfect, start + k, end))
            end = start + k
        else:
            out.append(range_hash(perfect, start, start + k))
            start += k
    out.reverse()
    return out


def consistency_path(perfect: SubtreeHashes, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) of RFC 9162 §2.1.4.1."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    out: list[bytes] = []
    m, start, end, whole = old_size, 0, new_size, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                out.append(range_hash(perfect, start, end))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            out.append(range_hash(perfect, start + k, end))
            end = start + k
        else:
            out.append(range_hash(perfect, start, start + k))
            m -= k
            start += k
            whole = False
    out.reverse()
    return out


def _leaf_accessor(leaves: Sequence[bytes]) -> SubtreeHashes:
    hashes = [leaf_hash(d) for d in leaves]
    cache: dict[tuple[int, int], bytes] = {}

    def perfect(level: int, index: int) -> bytes:
        if level == 0:
            return hashes[index]
        key = (level, index)
        if key not in cache:
            cache[key] = node_hash(perfect(level - 1, 2 * index), perfect(level - 1, 2 * index + 1))
        return cache[key]

    return perfect


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of entry ``index`` in the tree of ``leaves`` (entry bytes)."""
    return inclusion_path(_leaf_accessor(leaves), index, len(leaves))


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` entries is a prefix of ``leaves``."""
    return consistency_path(_leaf_accessor(leaves), old_size, len(leaves))


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) --------------------------------------------


def _well_formed(proof: Sequence[bytes], *roots: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in (*proof, *roots))


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` prove leaf ``index`` of ``size`` under ``root``?"""
    if not (0 <= index < size) or not _well_formed(proof, leaf_hash, root):
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False  # (step 4.1) more proof elements than the path has levels
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree ``(old_size, old_root)`` is a prefix of
    ``(new_size, new_root)``? Stops a log that rewrites history (a fork) between checkpoints."""
    if not 0 <= old_size <= new_size or not _well_formed(proof, old_root, new_root):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    # (step 2) if first is an exact power of 2, prepend first_hash to the proof
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    # (step 4) while LSB(fn) is set, right-shift both
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
