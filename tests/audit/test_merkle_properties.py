"""Property tests: every proof we generate verifies; any tampering makes it fail."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle

MAX_SIZE = 200


def _leaves(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


@st.composite
def _size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=MAX_SIZE))
    return n, draw(st.integers(min_value=0, max_value=n - 1))


@st.composite
def _old_and_new(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=0, max_value=MAX_SIZE))
    return draw(st.integers(min_value=0, max_value=n)), n


def test_every_inclusion_proof_up_to_64_leaves_verifies() -> None:
    for n in range(1, 65):
        leaves = _leaves(n)
        root = merkle.root_hash(leaves)
        for i in range(n):
            proof = merkle.inclusion_proof(leaves, i)
            assert merkle.verify_inclusion(merkle.leaf_hash(leaves[i]), i, n, proof, root)


def test_every_consistency_proof_up_to_64_leaves_verifies() -> None:
    for n in range(0, 65):
        leaves = _leaves(n)
        root = merkle.root_hash(leaves)
        for m in range(0, n + 1):
            proof = merkle.consistency_proof(leaves, m)
            old = merkle.root_hash(leaves[:m])
            assert merkle.verify_consistency(m, n, old, root, proof), (m, n)


@settings(max_examples=300, deadline=None)
@given(_size_and_index(), st.integers(min_value=0, max_value=255), st.data())
def test_inclusion_proof_verifies_and_tampering_is_rejected(
    si: tuple[int, int], bit: int, data: st.DataObject
) -> None:
    n, i = si
    leaves = _leaves(n)
    root = merkle.root_hash(leaves)
    proof = merkle.inclusion_proof(leaves, i)
    lh = merkle.leaf_hash(leaves[i])
    assert merkle.verify_inclusion(lh, i, n, proof, root)
    assert not merkle.verify_inclusion(_flip(lh, bit), i, n, proof, root)
    assert not merkle.verify_inclusion(lh, i, n, proof, _flip(root, bit))
    assert not merkle.verify_inclusion(lh, i, n, [*proof, root], root)
    if proof:
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[j] = _flip(bad[j], bit)
        assert not merkle.verify_inclusion(lh, i, n, bad, root)
        assert not merkle.verify_inclusion(lh, i, n, proof[:-1], root)
    if n > 1:
        other = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda x: x != i))
        assert not merkle.verify_inclusion(lh, other, n, proof, root)


@settings(max_examples=300, deadline=None)
@given(_old_and_new(), st.integers(min_value=0, max_value=255), st.data())
def test_consistency_proof_verifies_and_tampering_is_rejected(
    mn: tuple[int, int], bit: int, data: st.DataObject
) -> None:
    m, n = mn
    leaves = _leaves(n)
    old, new = merkle.root_hash(leaves[:m]), merkle.root_hash(leaves)
    proof = merkle.consistency_proof(leaves, m)
    assert merkle.verify_consistency(m, n, old, new, proof)
    assert not merkle.verify_consistency(m, n, old, new, [*proof, new])
    if 0 < m < n:  # the empty tree is a prefix of every tree: nothing to bind
        assert not merkle.verify_consistency(m, n, old, _flip(new, bit), proof)
        assert not merkle.verify_consistency(m, n, _flip(old, bit), new, proof)
        j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[j] = _flip(bad[j], bit)
        assert not merkle.verify_consistency(m, n, old, new, bad)
        assert not merkle.verify_consistency(m, n, old, new, proof[:-1])
