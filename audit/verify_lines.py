"""The per-entry half of the offline verifier (``audit.verify``), over one chunk of export lines.

Steps 3, 4, 5 and 9's collection, for lines ``[0, len(lines))`` of a chunk whose first entry
should have index ``start``: every line parses, indices run without gap, each entry's leaf hash
is recomputed from its bytes, its stored search columns are those its bytes imply, and the
entries a release check needs are picked out. The leaf hashes are folded into the perfect
subtrees that cover them (steps 6 and 7 need only those). A chunk depends on nothing but its
lines, its ``start`` and the checkpoint size, so ``audit.verify`` checks chunks in parallel
processes and stitches their results together in order; a chunk stops at its first hard failure,
so the first bad entry is still the first one in the export.

Trust assumption: none; the lines come from the operator.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from audit import merkle, restricted
from audit.columns import (
    INDEX_COLUMNS,
    column_mismatch,
    columns_json,
    implied_columns,
    index_columns,
    time_column,
)
from exchange.canonical import canonical_json

__all__ = ["ChunkResult", "canonical", "check_chunk", "check_packed", "pack", "range_pieces"]


@dataclass(slots=True)
class ChunkResult:
    """What one chunk of the export showed (see ``check_chunk``)."""

    start: int
    count: int = 0  # entries read (blank lines skipped), inside the checkpoint or beyond it
    failure: tuple[int, int, str] | None = None  # (line within the chunk, entry, reason)
    leaves: bytes = b""  # leaf hashes of the entries inside the checkpoint, concatenated
    claimed: bytes | None = b""  # their stored leaf hashes; None once one is missing or malformed
    first_mismatch: int | None = None  # the first entry whose stored hash is not its leaf hash
    unchecked_columns: int = 0
    column_bad: tuple[int, str] | None = None
    releases: list[tuple[int, dict[str, Any], bytes]] = field(default_factory=list)
    subjects: list[tuple[int, str]] = field(default_factory=list)  # (10) entries about a subject
    pieces: list[tuple[int, bytes]] = field(default_factory=list)  # (level, hash), left to right


def _plain_object(value: dict[str, Any]) -> bool:
    """ASCII keys; values only str, int, bool, None or such objects (the shape of our entries)."""
    for k, v in value.items():
        if not k.isascii():
            return False
        t = type(v)
        if t is str or t is int or t is bool or v is None:
            continue
        if t is not dict or not _plain_object(v):
            return False
    return True


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes. For ASCII keys and no floats, Python's sorted compact JSON *is* JCS (same
    key order, same string escapes), and five times faster than the general serialiser."""
    if type(value) is dict and _plain_object(value):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")
    return canonical_json(value)


_LINE_PREFIX = re.compile(
    r'\{"index":(0|[1-9][0-9]{0,18}),"leaf_hash":(?:"([A-Za-z0-9+/=]{0,64})"|null),'
).match
_COLUMNS_KEY = '"columns":'
_ENTRY_KEY = '"entry":'
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""One JSON value at a position: (value, end); what ``json.loads`` runs, without its wrapper."""
_Read = tuple[
    int, str | bytes | None, dict[str, Any], str | bytes | None, dict[str, Any] | bool | None
]
"""A line read: index, the entry's exact text (exact form only), entry, stored hash, columns
(True: already shown to be those the entry implies)."""
_LINE_PREFIX_BYTES = re.compile(
    rb'\{"index":(0|[1-9][0-9]{0,18}),"leaf_hash":(?:"([A-Za-z0-9+/=]{0,64})"|null),'
).match
_COLUMNS_OPEN = b'"columns":{'
_COLUMNS_END = b'},"entry":{'
_ENTRY_OPEN = b'"entry":{'


def _read_exact_bytes(line: bytes) -> _Read | None:
    """``_read_exact`` of a line's UTF-8 bytes, its two objects parsed by orjson (a fifth of the
    standard scanner's time). The line splits into the prefix, the columns' text up to the first
    ``},"entry":{`` and the entry's text up to the closing brace; when both texts parse on their
    own, that split *is* the line's JSON parse. Anything else — not UTF-8, not this form, a
    number orjson would read differently from ``json`` (a float, or an integer beyond 64 bits,
    which it reads as a float) — returns None and the line is read as text."""
    m = _LINE_PREFIX_BYTES(line)
    if m is None or line[-2:] != b"}}":  # the entry's text ends with its brace: no blank after it
        return None
    pos, columns_text = m.end(), None
    if line.startswith(_COLUMNS_OPEN, pos):
        cut = line.find(_COLUMNS_END, pos)
        if cut < 0:
            return None
        columns_text = line[pos + len(_COLUMNS_OPEN) - 1 : cut + 1]
        pos = cut + 2
    if not line.startswith(_ENTRY_OPEN, pos):
        return None
    raw = line[pos + len(_ENTRY_OPEN) - 1 : -1]
    try:
        entry = orjson.loads(raw)
        if type(entry) is not dict or not _exact_numbers(entry):
            return None
        columns = None if columns_text is None else _columns_read(columns_text, entry)
    except orjson.JSONDecodeError:
        return None
    if columns is False:
        return None
    return int(m[1]), raw, entry, m[2], columns


def _columns_read(text: bytes, entry: dict[str, Any]) -> dict[str, Any] | bool:
    """(5) True when the columns' text is, byte for byte, the compact JSON of the columns the
    entry implies (it then parses to them); else the columns parsed (False: not an object, or
    holding a float)."""
    if text == orjson.dumps(implied_columns(entry)):
        return True
    columns = orjson.loads(text)
    if type(columns) is not dict or not _exact_numbers(columns):
        return False
    return columns


def _exact_numbers(value: dict[str, Any] | list[Any]) -> bool:
    """No float anywhere in ``value`` (orjson's and ``json``'s readings of it are then equal)."""
    values = value.values() if type(value) is dict else value
    types = set(map(type, values))
    if float in types:
        return False
    if dict in types or list in types:
        return all(_exact_numbers(v) for v in values if type(v) is dict or type(v) is list)
    return True


def _read_exact(line: str) -> _Read | None:
    """The line in the exact form ``TransparencyLog.export`` writes, keeping the entry's text as
    written (parsed on its own, so what is hashed is what a reader sees)."""
    m = _LINE_PREFIX(line)
    if m is None:
        return None
    pos, columns = m.end(), None
    try:
        if line.startswith(_COLUMNS_KEY, pos):
            columns, pos = _SCAN(line, pos + len(_COLUMNS_KEY))
            if not line.startswith(",", pos):
                return None
            pos += 1
        if not line.startswith(_ENTRY_KEY, pos):
            return None
        pos += len(_ENTRY_KEY)
        entry, end = _SCAN(line, pos)
    except (StopIteration, ValueError):
        return None
    if end != len(line) - 1 or line[end] != "}" or type(entry) is not dict:
        return None
    if columns is not None and type(columns) is not dict:
        return None
    return int(m[1]), line[pos:end], entry, m[2], columns


def _read_loose(line: str) -> _Read | None:
    """Any JSON object with an integer ``index`` and an object ``entry`` (a re-formatted export)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    index, entry, stored = obj.get("index"), obj.get("entry"), obj.get("leaf_hash")
    columns = obj.get("columns")
    if type(index) is not int or not isinstance(entry, dict):
        return None
    if columns is not None and not isinstance(columns, dict):
        return None
    return index, None, entry, stored if isinstance(stored, str) else None, columns


def _stored_hash(stored: str | bytes | None) -> bytes | None:
    """The stored leaf hash, strictly base64 decoded (RFC 4648: alphabet, padding); None when
    absent or not base64."""
    if not stored:
        return None
    try:
        return binascii.a2b_base64(stored, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _leaf(raw: str | bytes | None, entry: dict[str, Any], stored: bytes | None) -> bytes | None:
    """(4) The leaf hash: of the entry's bytes as exported when they hash to the stored leaf (the
    common case, no re-serialising), else of its canonical JSON (so an export that was merely
    re-formatted still verifies); None when the entry has no canonical JSON."""
    if raw is not None:
        leaf = hashlib.sha256(b"\x00" + (raw if isinstance(raw, bytes) else raw.encode())).digest()
        if leaf == stored:
            return leaf
    try:
        return merkle.leaf_hash(canonical(entry))
    except (UnicodeEncodeError, ValueError, TypeError):
        return None


_TEXT_COLUMNS = INDEX_COLUMNS[1:]
_stored_texts = operator.itemgetter(*_TEXT_COLUMNS)
_TEXT_TYPES = frozenset((str, type(None)))
_MISSING = object()


def _columns_match(columns: dict[str, Any], entry: dict[str, Any]) -> bool:
    """(5) ``columns == columns_json(index_columns(entry))``, the common case without building
    either: the nine text columns compared as one tuple, then the time."""
    if len(columns) == len(INDEX_COLUMNS):
        try:
            stored = _stored_texts(columns)
        except KeyError:
            return False
        derived = tuple(map(entry.get, _TEXT_COLUMNS))
        if stored == derived and _TEXT_TYPES.issuperset(map(type, derived)):
            return bool(columns.get("time_us", _MISSING) == time_column(entry.get("time")))
    return columns == columns_json(index_columns(entry))


def _column_problem(columns: dict[str, Any], entry: dict[str, Any]) -> str:
    stored = tuple(columns.get(name, _MISSING) for name in INDEX_COLUMNS)
    return column_mismatch(entry, stored) or "columns"


def _perfect(hashes: Sequence[bytes]) -> bytes:
    """The root of a perfect subtree over ``hashes`` (a power of two of them), level by level."""
    level = list(hashes)
    sha = hashlib.sha256
    while len(level) > 1:
        level = [
            sha(b"\x01" + a + b).digest() for a, b in zip(level[::2], level[1::2], strict=True)
        ]
    return level[0]


def range_pieces(start: int, hashes: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """The perfect subtrees ``(level, hash)`` that cover leaves ``[start, start + len(hashes))``,
    left to right, each aligned (its first leaf a multiple of its width): pushed in order onto
    the compact range of the first ``start`` leaves, they give that of ``start + len(hashes)``."""
    out: list[tuple[int, bytes]] = []
    pos, end = start, start + len(hashes)
    while pos < end:
        width = 1 << ((end - pos).bit_length() - 1)
        while pos % width:
            width >>= 1
        out.append((width.bit_length() - 1, _perfect(hashes[pos - start : pos - start + width])))
        pos += width
    return out


def pack(lines: list[str | bytes]) -> bytes | list[str | bytes]:
    """A chunk as it goes to a worker process: its text lines joined into one UTF-8 string (one
    encoding, where pickling encodes each line on its own), or the lines themselves when they
    are bytes or one holds a line break."""
    try:
        joined = "\n".join(lines)  # type: ignore[arg-type]  # TypeError for bytes lines
    except TypeError:
        return lines
    if joined.count("\n") != len(lines) - 1:
        return lines
    return joined.encode("utf-8", "surrogatepass")


def check_packed(start: int, packed: bytes | list[str | bytes], cp_size: int) -> ChunkResult:
    """``check_chunk`` of a chunk ``pack`` packed (in a worker process): its lines as bytes, read
    as ``pack`` encoded them where they are not read as bytes."""
    if isinstance(packed, bytes):
        return check_chunk(start, packed.split(b"\n"), cp_size, errors="surrogatepass")
    return check_chunk(start, packed, cp_size)


def _read(raw_line: str | bytes, errors: str) -> _Read | Literal[False] | None:
    """(3) The line read (``_read_exact_bytes``, else as text: ``_read_exact``, ``_read_loose``);
    False for a blank line; None when it does not parse. Bytes are decoded with ``errors``."""
    if isinstance(raw_line, bytes):
        if raw_line[-1:] == b"}" and (read := _read_exact_bytes(raw_line)) is not None:
            return read
        line = raw_line.decode("utf-8", errors)
    else:
        line = raw_line
    if line[-1:] != "}":  # as export writes it: no blank line, no line end to strip
        if not line.strip():
            return False
        line = line.rstrip("\r\n")
    return _read_exact(line) or _read_loose(line)


def check_chunk(
    start: int, lines: Sequence[str | bytes], cp_size: int, *, errors: str = "replace"
) -> ChunkResult:
    """Check ``lines``, whose first entry should be entry ``start``, for a checkpoint of size
    ``cp_size``; stops at the first line that does not parse, is out of sequence or has no
    canonical JSON (``failure``). Lines given as bytes are UTF-8, decoded with ``errors``."""
    out = ChunkResult(start)
    leaves: list[bytes] = []
    claimed: list[bytes] | None = []
    for offset, raw_line in enumerate(lines):
        read = _read(raw_line, errors)
        if read is False:
            continue
        expected = start + out.count
        # (3) every line parses and indices run without gap
        if read is None:
            at = min(expected, cp_size)
            out.failure = (offset, at, f"entry {at}: unreadable line")
            break
        index, raw, entry, stored, columns = read
        if index != expected:
            what = "missing" if index > expected else "out of order or duplicated"
            out.failure = (offset, expected, f"entry {expected} is {what} (found index {index})")
            break
        out.count += 1
        if index >= cp_size:
            continue  # beyond the checkpoint: not covered by its signature
        stored_hash = _stored_hash(stored)
        leaf = _leaf(raw, entry, stored_hash)
        if leaf is None:
            out.failure = (offset, index, f"entry {index}: not canonical JSON")
            break
        leaves.append(leaf)
        if stored_hash is None or len(stored_hash) != merkle.HASH_SIZE:
            claimed = None
        else:
            if claimed is not None:
                claimed.append(stored_hash)
            if stored_hash != leaf and out.first_mismatch is None:
                out.first_mismatch = index
        _check_columns(out, index, columns, entry)
        # (9) the entries the release check needs, checked in order by the caller
        if entry.get("kind") == restricted.RELEASE_KIND or "subject_commitment" in entry:
            out.releases.append((index, entry, leaf))
        # (10) the entries the subject map counts, chained in order by the caller
        subject = entry.get("subject")
        if type(subject) is str:
            out.subjects.append((index, subject))
    return _finish(out, leaves, claimed)


def _check_columns(
    out: ChunkResult, index: int, columns: dict[str, Any] | bool | None, entry: dict[str, Any]
) -> None:
    """(5) the stored search columns are those the entry's bytes imply"""
    if columns is None:
        out.unchecked_columns += 1
        return
    if columns is True or out.column_bad is not None:  # True: matched as text (_columns_read)
        return
    if isinstance(columns, dict) and not _columns_match(columns, entry):
        out.column_bad = (index, _column_problem(columns, entry))


def _finish(out: ChunkResult, leaves: list[bytes], claimed: list[bytes] | None) -> ChunkResult:
    out.leaves = b"".join(leaves)
    out.claimed = None if claimed is None else b"".join(claimed)
    if out.failure is None:
        out.pieces = range_pieces(out.start, leaves)
    return out
