"""RFC 9162 proof vectors (transparency-dev/merkle testdata) through ``audit.merkle``.

One parametrised loader over ``tests/vectors/merkle``: every ``happy-path.json`` must verify
and equal the proof we generate for the RFC 6962 8-leaf test tree; every other file alters one
thing and must be rejected.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from audit import merkle
from tests import vectors

TEST_TREE = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]


def _files(kind: str) -> list[Path]:
    files = sorted(vectors.path("merkle", kind).glob("*/*.json"))
    assert files, f"no {kind} vectors in tests/vectors/merkle"
    return files


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _proof(values: list[str] | None) -> list[bytes]:
    return [_b64(v) for v in values or []]


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@pytest.mark.parametrize("path", _files("inclusion"), ids=_id)
def test_inclusion_vector_verifies_only_when_happy(path: Path) -> None:
    v = json.loads(path.read_text())
    ok = merkle.verify_inclusion(
        _b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"])
    )
    assert ok is (not v["wantErr"]), v["desc"]
    if path.name == "happy-path.json":
        leaves = TEST_TREE[: v["treeSize"]]
        assert merkle.root_hash(leaves) == _b64(v["root"])
        assert merkle.leaf_hash(leaves[v["leafIdx"]]) == _b64(v["leafHash"])
        assert merkle.inclusion_proof(leaves, v["leafIdx"]) == _proof(v["proof"])


@pytest.mark.parametrize("path", _files("consistency"), ids=_id)
def test_consistency_vector_verifies_only_when_happy(path: Path) -> None:
    v = json.loads(path.read_text())
    ok = merkle.verify_consistency(
        v["size1"], v["size2"], _b64(v["root1"]), _b64(v["root2"]), _proof(v["proof"])
    )
    assert ok is (not v["wantErr"]), v["desc"]
    if path.name == "happy-path.json":
        leaves = TEST_TREE[: v["size2"]]
        assert merkle.root_hash(leaves[: v["size1"]]) == _b64(v["root1"])
        assert merkle.root_hash(leaves) == _b64(v["root2"])
        assert merkle.consistency_proof(leaves, v["size1"]) == _proof(v["proof"])


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root_hash([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
