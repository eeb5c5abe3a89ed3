"""C2SP signed-note / tlog-checkpoint vectors (``tests/vectors/checkpoint``) through
``audit.checkpoint``: every note is loaded by one parametrised loader and judged by its
``expect`` field (valid / reject / parse-only)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from audit.checkpoint import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    open_note,
    parse_checkpoint,
    parse_unverified_note,
    sign_checkpoint,
    verify_checkpoint,
)
from exchange.errors import ConfigurationError
from tests import vectors


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = vectors.load("checkpoint", name)
    return data


def _cases(name: str, *keys: str) -> list[Any]:
    data = _load(name)
    out: list[Any] = []
    for key in keys:
        out += [pytest.param(v, id=v.get("id", v.get("desc"))) for v in data[key]]
    return out


def _note_bytes(v: dict[str, Any]) -> bytes:
    """UTF-8, except that vectors flagged ``note_is_bytes_latin1`` carry raw bytes 0x80-0xff."""
    if not v.get("note_is_bytes_latin1"):
        return bytes(v["note"].encode("utf-8"))
    return b"".join(bytes([ord(c)]) if 0x80 <= ord(c) <= 0xFF else c.encode() for c in v["note"])


def _verifiers(v: dict[str, Any]) -> list[NoteVerifier]:
    vkeys = v.get("vkeys_trusted") or v.get("vkeys") or ([v["vkey"]] if v.get("vkey") else [])
    return [NoteVerifier.from_vkey(k) for k in vkeys]


@pytest.mark.parametrize("v", _cases("signed-note-vectors.json", "notes", "derived_checkpoints"))
def test_signed_note_vector_is_judged_as_expected(v: dict[str, Any]) -> None:
    expect: str = v["expect"]
    note = _note_bytes(v)
    if expect.startswith("parse-only"):
        parsed = parse_unverified_note(note)
        if "parsed_text" in v:
            assert parsed.text == v["parsed_text"]
            assert [(s.name, s.key_id.hex(), len(s.signature)) for s in parsed.signatures] == [
                (s["name"], s["key_id_hex"], s["sig_len"]) for s in v["parsed_signatures"]
            ]
        return
    verifiers = _verifiers(v)
    if expect.startswith("reject as checkpoint") or expect.startswith("signature valid, but"):
        if expect.startswith("signature valid"):
            open_note(note, verifiers)  # the signature itself is fine ...
        with pytest.raises(NoteError):  # ... but it is not a checkpoint of this log
            verify_checkpoint(note, verifiers[0])
    elif expect.startswith("reject"):
        if "expected_origin" in v:
            with pytest.raises(NoteError):
                verify_checkpoint(note, verifiers[0], origin=v["expected_origin"])
        else:
            with pytest.raises(NoteError):
                open_note(note, verifiers)
    else:
        assert expect.startswith("valid"), expect
        opened = open_note(note, verifiers)
        if "3 verified" in expect:
            assert len(opened.signatures) == 3
        if v.get("derived"):
            cp = verify_checkpoint(note, verifiers[0])
            if "tree_size" in v:
                assert (cp.origin, cp.size, cp.root.hex()) == (
                    v["origin"],
                    v["tree_size"],
                    v["root_hex"],
                )


def test_two_signature_note_verifies_with_either_key_alone() -> None:
    v = next(n for n in _load("signed-note-vectors.json")["notes"] if n["id"] == "go-note-two-sigs")
    for vkey in v["vkeys"]:
        opened = open_note(v["note"], [NoteVerifier.from_vkey(vkey)])
        assert [s.name for s in opened.signatures] == [vkey.split("+")[0]]
    enoch = NoteSigner.from_skey(v["skey_enoch"])
    assert enoch.vkey() == v["vkeys"][1]


def test_signing_with_go_skey_reproduces_the_upstream_note_byte_for_byte() -> None:
    v = next(
        n for n in _load("signed-note-vectors.json")["notes"] if n["id"] == "go-note-peter-sign"
    )
    signer = NoteSigner.from_skey(v["skey"])
    assert signer.vkey() == v["vkey"]
    assert signer.skey() == v["skey"]
    assert signer.sign(v["text"]) == v["note"]


def test_derived_checkpoint_is_reproduced_by_signing_with_the_log_key() -> None:
    data = _load("signed-note-vectors.json")
    v = data["derived_checkpoints"][0]
    signer = NoteSigner.from_skey(data["formats_test_keys"]["Log"]["skey"])
    cp = Checkpoint(v["origin"], v["tree_size"], bytes.fromhex(v["root_hex"]))
    assert sign_checkpoint(cp, signer) == v["note"]


@pytest.mark.parametrize("v", _cases("checkpoint-body-vectors.json", "body_parse"))
def test_checkpoint_body_vector_parses_as_expected(v: dict[str, Any]) -> None:
    strict_rejects = v["m"].endswith("\n\n")  # empty extension lines: C2SP says MUST be non-empty
    if v["wantErr"] or strict_rejects:
        with pytest.raises(NoteError):
            parse_checkpoint(v["m"], hash_size=None)
        return
    cp = parse_checkpoint(v["m"], hash_size=None)
    assert (cp.origin, cp.size, cp.root.decode()) == (v["origin"], v["size"], v["hash_utf8"])
    assert "".join(f"{line}\n" for line in cp.extensions) == v["rest"]


def test_sumdb_tree_note_parses_and_its_bad_variants_are_rejected() -> None:
    v = _load("checkpoint-body-vectors.json")["sumdb_tree"]
    origin = "go.sum database tree"
    cp = parse_checkpoint(v["note_text"], origin=origin)
    assert (cp.size, base64.b64encode(cp.root).decode()) == (v["tree_size"], v["root_b64"])
    for bad in v["bad"]:
        with pytest.raises(NoteError):
            parse_checkpoint(bad, origin=origin)


def test_c2sp_example_checkpoint_parses() -> None:
    v = _load("checkpoint-body-vectors.json")["c2sp_example"]
    note = parse_unverified_note(v["note"])
    cp = parse_checkpoint(note.text)
    assert (cp.origin, cp.size, base64.b64encode(cp.root).decode()) == (
        v["origin"],
        v["tree_size"],
        v["root_b64"],
    )
    assert [s.name for s in note.signatures] == [v["origin"]]


def test_generated_log_key_signs_checkpoints_its_verifier_accepts() -> None:
    signer = NoteSigner.generate("example.org/log")
    restored = NoteSigner.from_skey(signer.skey())
    cp = Checkpoint("example.org/log", 3, bytes(32), ("ext",))
    note = sign_checkpoint(cp, restored)
    assert verify_checkpoint(note, signer.verifier()) == cp
    other = NoteSigner.generate("example.org/log").verifier()
    with pytest.raises(NoteError):
        verify_checkpoint(note, other)


def test_log_key_is_created_once_with_private_permissions_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-log.skey"
    first = NoteSigner.create(path, "example.org/log")
    assert path.stat().st_mode & 0o777 == 0o600
    again = NoteSigner.load(path, "example.org/log")
    assert again.vkey() == first.vkey()
    with pytest.raises(ConfigurationError):
        NoteSigner.load(path, "example.org/another-log")


def test_an_existing_log_key_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "audit-log.skey"
    first = NoteSigner.create(path, "example.org/log")
    with pytest.raises(ConfigurationError):
        NoteSigner.create(path, "example.org/log")
    assert NoteSigner.load(path, "example.org/log").vkey() == first.vkey()


def test_a_missing_log_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "audit-log.skey"
    with pytest.raises(ConfigurationError):
        NoteSigner.load(path, "example.org/log")
    assert not path.exists()
