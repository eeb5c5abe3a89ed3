"""Property tests of the subject map's tree in memory (``audit.subject_map.SubjectTree``): however
members arrive — in one build or in steps of updates, new keys and changed ones, keys sharing long
prefixes — the tree's root is the one the format's definition gives from scratch
(``audit.completeness.compact_root``), and each key's proof folds to it."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.completeness import EMPTY, Member, compact_root, fold
from audit.subject_map import SubjectTree

# keys drawn from a few prefixes, so paths share long stretches and leaves split deep
_PREFIXES = (b"", b"\x00" * 3, b"\xff\x00", b"\x80" * 2 + b"\x01", b"\x5a" * 12, b"\x5a" * 31)


@st.composite
def _key(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(_PREFIXES))
    rest = hashlib.sha256(draw(st.binary(min_size=1, max_size=4))).digest()
    return (prefix + rest)[:32]


_steps = st.lists(
    st.lists(st.tuples(_key(), st.integers(min_value=1, max_value=5)), min_size=1, max_size=12),
    min_size=1,
    max_size=6,
)


def _chain(key: bytes, count: int) -> bytes:
    return hashlib.sha256(key + bytes([count])).digest()


@settings(max_examples=300, deadline=None)
@given(_steps)
def test_updates_in_steps_lead_to_the_root_computed_from_scratch(
    steps: list[list[tuple[bytes, int]]],
) -> None:
    tree, members, size = SubjectTree(), dict[bytes, Member](), 0
    for step in steps:
        changed = {key: Member(key, count, _chain(key, count)) for key, count in step}
        members |= changed
        size += len(step)
        update = tree.update([m.encode() for m in changed.values()], size)
        assert update.root == compact_root(members.values())
        assert tree.apply(update)
        assert not tree.apply(update)  # its base is gone: never applied twice
    assert tree.root == SubjectTree.build(members.values(), size).root
    for key, member in members.items():
        siblings, end = tree.prove(key)
        assert end == member
        assert fold(key, member.leaf(), siblings) == tree.root


@settings(max_examples=100, deadline=None)
@given(st.lists(_key(), unique=True, max_size=20), _key())
def test_a_key_without_a_leaf_proves_its_absence(keys: list[bytes], absent: bytes) -> None:
    members = [Member(k, 1, _chain(k, 1)) for k in keys if k != absent]
    tree = SubjectTree.build(members, len(members))
    siblings, end = tree.prove(absent)
    assert end is None or end.key != absent
    assert fold(absent, EMPTY if end is None else end.leaf(), siblings) == tree.root


def test_a_commit_keeps_a_tree_a_proof_already_brought_to_the_new_map() -> None:
    """``MapCache.commit`` after another thread synced the tree to the checkpoint's map: the
    update no longer fits the tree's base, but the tree is where it leads, so it is kept; a tree
    at any other map is dropped (and rebuilt from the stored map when next used)."""
    from audit.subject_map import MapCache

    first = [Member(k, 1, _chain(k, 1)) for k in (b"\x01" * 32, b"\x82" * 32)]
    later = Member(b"\x44" * 32, 1, _chain(b"\x44" * 32, 1))
    cache = MapCache()
    cache.tree = SubjectTree.build(first, 2)
    update = cache.tree.update([later.encode()], 3)
    cache.tree = SubjectTree.build([*first, later], 3)  # synced by a proof in between
    kept = cache.tree
    cache.commit(update)
    assert cache.tree is kept
    cache.tree = SubjectTree.build(first[:1], 1)  # somewhere else altogether
    cache.commit(update)
    assert cache.tree is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 8)), min_size=1, max_size=6),
    st.integers(0, 40),
    st.integers(0, 12),
)
def test_what_the_cache_recalls_is_what_was_remembered_or_nothing(
    batches: list[tuple[int, int]], start: int, length: int
) -> None:
    """``MapCache.recall`` after ``forget``: any range it answers holds the entries remembered
    there (never another's), and none of the forgotten range is recalled. (``forget`` may drop
    more than asked — those are read back from the database — but never keeps what it was
    asked to drop.)"""
    from audit.subject_map import MapCache

    cache = MapCache()
    remembered: dict[int, tuple[bytes, str | None]] = {}
    for first, n in batches:
        entries = [(i.to_bytes(32, "big"), f"s-{i}") for i in range(first, first + n)]
        cache.remember(first, entries)
        remembered.update(enumerate(entries, first))
    cache.forget(start, start + length)
    for i in range(start, start + length):
        assert cache.recall(i, i + 1) is None
    for lo in range(0, 50):
        for hi in range(lo + 1, min(lo + 10, 51)):
            found = cache.recall(lo, hi)
            if found is not None:
                assert found == [(i, *remembered[i]) for i in range(lo, hi)]
