"""The verifier checks a large export in chunks, in worker processes: the report must be the one
the same export gets when it is checked here line by line — the same verdict, the same first bad
entry, the same reasons — whatever the chunk boundaries, blank lines or tampering."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from audit import merkle, verify
from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.log import TransparencyLog, entry_bytes
from audit.verify_lines import range_pieces
from tests.audit.audit_factories import T0, make_event

SIZE = 37  # chunks of 4: nine whole ones and a part, none aligned with the checkpoints below
Edit = Callable[[list[str]], list[str] | list[bytes]]
Lines = list[str | bytes]


def _entry(lines: list[str], at: int, **changes: str) -> list[str]:
    """Line ``at`` with its entry's fields changed (its stored hash and columns left alone)."""
    line = json.loads(lines[at])
    line["entry"] |= changes
    return [
        *lines[:at],
        json.dumps(line, separators=(",", ":"), ensure_ascii=False),
        *lines[at + 1 :],
    ]


def _columns(lines: list[str], at: int, **changes: str) -> list[str]:
    line = json.loads(lines[at])
    line["columns"] |= changes
    return [*lines[:at], json.dumps(line, separators=(",", ":")), *lines[at + 1 :]]


def _edit(lines: list[str], at: int, change: Callable[[dict[str, Any]], object]) -> list[str]:
    """Line ``at`` parsed, changed in place by ``change`` and written back compactly."""
    line = json.loads(lines[at])
    change(line)
    text = json.dumps(line, separators=(",", ":"), ensure_ascii=False)
    return [*lines[:at], text, *lines[at + 1 :]]


# lines the worker's orjson reader (``_read_exact_bytes``) must leave to the text reader, or read
# exactly as it would: numbers json reads otherwise, a columns object holding the entry's key,
# columns that are right but not in the export's order, bytes that are not UTF-8
ORJSON_EDITS: dict[str, Edit] = {
    "a float in an entry": lambda lines: _edit(lines, 11, lambda d: d["entry"].update(n=1.5)),
    "a 20-digit integer in an entry": lambda lines: _edit(
        lines, 12, lambda d: d["entry"].update(n=10**20)
    ),
    "a float column": lambda lines: _edit(
        lines, 14, lambda d: d["columns"].update(time_us=float(d["columns"]["time_us"]))
    ),
    "columns holding an entry": lambda lines: _edit(
        lines, 15, lambda d: d["columns"].update(x={"a": {}, "entry": {"b": 1}})
    ),
    "columns in another order": lambda lines: _edit(
        lines, 16, lambda d: d.update(columns=dict(reversed(d["columns"].items())))
    ),
    "not UTF-8": lambda lines: [
        *(line.encode() for line in lines[:18]),
        lines[18].encode().replace(b"ps-", b"ps\xff"),
        *(line.encode() for line in lines[19:]),
    ],
}
EDITS: dict[str, Edit] = {
    "untouched": lambda lines: lines,
    "blank lines": lambda lines: [*lines[:5], "", "  ", *lines[5:21], "\n", *lines[21:]],
    "altered entry": lambda lines: _entry(lines, 22, purpose="something-else"),
    "dropped entry": lambda lines: lines[:13] + lines[14:],
    "swapped entries": lambda lines: [*lines[:9], lines[10], lines[9], *lines[11:]],
    "garbage line": lambda lines: [*lines[:30], "{not json", *lines[31:]],
    "rewritten column": lambda lines: _columns(lines, 17, subject="ps-someone-else"),
    "two findings": lambda lines: _columns(_entry(lines, 33, kind="x"), 6, client="c"),
    "ends early": lambda lines: lines[:26],
    "line breaks inside a line": lambda lines: [
        *lines[:7],
        json.dumps(json.loads(lines[7]), indent=1),
        *lines[8:],
    ],
    "bytes lines": lambda lines: [line.encode() for line in lines],
    "entries beyond the checkpoint": lambda lines: lines,
    **ORJSON_EDITS,
}


@pytest.mark.parametrize("edit", EDITS)
def test_chunked_workers_report_what_one_pass_reports(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    log.append_many([make_event(i, subject=f"ps-{i % 5}") for i in range(SIZE)])
    note = log.sign_checkpoint(T0).note
    if edit == "entries beyond the checkpoint":
        note = _checkpoint_of(log, 29)
    lines: Lines = list(EDITS[edit](list(log.export())))
    monkeypatch.setattr(verify, "CHUNK", 4)
    one = verify.verify_export(note, lines, log.vkey(), workers=1)
    many = verify.verify_export(note, iter(lines), log.vkey(), workers=2)
    assert many == one
    fine = (
        "untouched",
        "blank lines",
        "entries beyond the checkpoint",
        "line breaks inside a line",
        "columns in another order",
        "a float column",  # the same number: 1795392000001000.0 == 1795392000001000
    )
    assert (edit in (*fine, "bytes lines")) == one.ok


def _checkpoint_of(log: TransparencyLog, size: int) -> str:
    """A checkpoint of the log's first ``size`` entries (signed as the log signs its own)."""
    return sign_checkpoint(Checkpoint(log.origin, size, log.root(size)), log._signer)


def test_an_earlier_checkpoint_inside_a_chunk_is_checked(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append_many([make_event(i) for i in range(11)])
    earlier = log.sign_checkpoint(T0).note
    log.append_many([make_event(100 + i) for i in range(26)])
    later = log.sign_checkpoint(T0 + timedelta(hours=1)).note
    monkeypatch.setattr(verify, "CHUNK", 4)
    report = verify.verify_export(later, log.export(), log.vkey(), earlier, workers=2)
    assert report, report.reasons
    assert "consistent with the earlier checkpoint of size 11" in report.reasons
    forged = [json.dumps(json.loads(line)) for line in log.export()]
    forged[10] = forged[10].replace('"decision": "allow"', '"decision": "deny"')
    assert not verify.verify_export(later, forged, log.vkey(), earlier, workers=2)


@pytest.mark.parametrize(("start", "count"), [(0, 1), (0, 8), (3, 13), (8, 8), (5, 1), (6, 27)])
def test_range_pieces_extend_a_tree_to_the_rfc_9162_root(start: int, count: int) -> None:
    leaves = [entry_bytes(make_event(i)) for i in range(start + count)]
    hashes = [merkle.leaf_hash(d) for d in leaves]
    stack: list[tuple[int, bytes]] = []
    for level, h in range_pieces(0, hashes[:start]) + range_pieces(start, hashes[start:]):
        while stack and stack[-1][0] == level:
            h = merkle.node_hash(stack.pop()[1], h)
            level += 1
        stack.append((level, h))
    assert merkle.fold_compact_range([h for _, h in stack]) == merkle.root_hash(leaves)


def _die(*_: object) -> None:
    """A worker that dies mid-task (killed, out of memory)."""
    os._exit(1)


@pytest.mark.parametrize("edit", ["untouched", "altered entry"])
def test_a_worker_that_dies_does_not_hang_the_verifier(
    log: TransparencyLog, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    """The pool breaks; what the workers did not answer is checked here, to the same report."""
    log.append_many([make_event(i, subject=f"ps-{i % 5}") for i in range(SIZE)])
    note = log.sign_checkpoint(T0).note
    lines: Lines = list(EDITS[edit](list(log.export())))
    monkeypatch.setattr(verify, "CHUNK", 4)
    one = verify.verify_export(note, lines, log.vkey(), workers=1)
    monkeypatch.setattr(verify, "check_packed", _die)
    monkeypatch.setattr(verify.threading, "active_count", lambda: 1)  # forked: sees the patch
    assert verify.verify_export(note, iter(lines), log.vkey(), workers=2) == one
