"""The offline verifier: does an export of the log match a signed checkpoint? (``onceonly audit
verify``).

Trust assumption: the auditor trusts only the log's public key (a C2SP ``vkey`` it pinned) and,
optionally, an earlier checkpoint it saved itself. The export and everything in it come from the
operator and are untrusted. The steps, each labelled in the code:

1. The checkpoint is signed by the pinned log key, for that log's origin — stops a forged or
   altered checkpoint, and one of another log passed off as this one.
2. The earlier checkpoint (if any) is signed by the same key and is not larger — stops a
   substituted reference point.
3. Every export line parses and indices run 0, 1, 2, … without gap — stops a dropped entry and an
   entry inserted by renumbering.
4. Each entry's leaf hash is recomputed from its canonical JSON (RFC 8785) — stops an edited
   entry whose stored hash was left alone.
5. The root recomputed over the first ``size`` entries equals the checkpoint's root — stops any
   change, insertion, deletion or reordering at all (the decisive check).
6. Consistency: the root over the first ``earlier.size`` entries equals the earlier checkpoint's
   root — stops a log that rewrote history between two checkpoints (a fork).
7. Localisation, only when 5 failed: if the leaf hashes the export carries (read from the stored
   tree) hash up to the signed root, they are authentic, and the first entry whose recomputed hash
   differs is the first bad entry. If they do not, the tree itself was rewritten and the report
   says so, naming the first entry that disagrees with its stored hash when there is one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from audit import merkle
from audit.checkpoint import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from exchange.canonical import canonical_json
from exchange.errors import ConfigurationError

__all__ = ["VerifyReport", "verify_export"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The verdict (truthy when the export verifies) with its reasons and the first bad entry."""

    ok: bool
    checkpoint: Checkpoint | None
    entries: int
    first_bad_index: int | None
    reasons: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.ok


class _Tree:
    """A streaming RFC 9162 root: the compact range of the leaves pushed so far."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    def push(self, h: bytes) -> None:
        level, cur = 0, h
        while self._stack and self._stack[-1][0] == level:
            cur = merkle.node_hash(self._stack.pop()[1], cur)
            level += 1
        self._stack.append((level, cur))
        self.size += 1

    def root(self) -> bytes:
        return merkle.fold_compact_range([h for _, h in self._stack])


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


def _canonical(value: Any) -> bytes:
    """RFC 8785 bytes. For ASCII keys and no floats, Python's sorted compact JSON *is* JCS (same
    key order, same string escapes), and five times faster than the general serialiser."""
    if type(value) is dict and _plain_object(value):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")
    return canonical_json(value)


_LINE_PREFIX = re.compile(
    r'\{"index":(0|[1-9][0-9]{0,18}),"leaf_hash":(?:"([A-Za-z0-9+/=]{0,64})"|null),"entry":'
)


def _parse_line(line: str) -> tuple[int, str | None, dict[str, Any], str | None] | None:
    """``(index, exact entry text or None, entry, stored leaf hash)``, or None if unreadable.

    Lines in the exact form ``TransparencyLog.export`` writes yield the entry's text as written,
    which is checked to be a JSON object on its own (so what is hashed is what a reader sees).
    """
    m = _LINE_PREFIX.match(line)
    if m is not None and line.endswith("}"):
        raw = line[m.end() : -1]
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            return int(m[1]), raw, entry, m[2]
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    index, entry, stored = obj.get("index"), obj.get("entry"), obj.get("leaf_hash")
    if type(index) is not int or not isinstance(entry, dict):
        return None
    return index, None, entry, stored if isinstance(stored, str) else None


def _fail(
    cp: Checkpoint | None, entries: int, first_bad: int | None, *reasons: str
) -> VerifyReport:
    return VerifyReport(False, cp, entries, first_bad, tuple(reasons))


def verify_export(
    checkpoint_text: str | bytes,
    export_lines: Iterable[str | bytes],
    log_public_key: str | NoteVerifier,
    earlier_checkpoint: str | bytes | None = None,
) -> VerifyReport:
    """Check an export (JSON Lines from ``TransparencyLog.export(0, …)``) against a checkpoint.

    ``log_public_key`` is the log's C2SP vkey. Returns a report; never raises for bad input.
    """
    try:
        key = (
            log_public_key
            if isinstance(log_public_key, NoteVerifier)
            else NoteVerifier.from_vkey(log_public_key)
        )
    except ConfigurationError as exc:
        return _fail(None, 0, None, f"the log public key is not usable: {exc.detail}")
    # (1) the checkpoint is signed by the pinned log key, for its origin
    try:
        cp = verify_checkpoint(checkpoint_text, key)
    except NoteError as exc:
        return _fail(None, 0, None, f"checkpoint rejected: {exc.detail}")
    # (2) the earlier checkpoint is the same log's and not larger
    earlier: Checkpoint | None = None
    if earlier_checkpoint is not None:
        try:
            earlier = verify_checkpoint(earlier_checkpoint, key)
        except NoteError as exc:
            return _fail(cp, 0, None, f"earlier checkpoint rejected: {exc.detail}")
        if earlier.size > cp.size:
            return _fail(cp, 0, None, "the earlier checkpoint is larger than the new one: rollback")

    recomputed = _Tree()
    claimed: list[bytes] = []  # hashed into a root only if step 5 fails
    earlier_root: bytes | None = merkle.EMPTY_ROOT if earlier and earlier.size == 0 else None
    first_mismatch: int | None = None
    claimed_complete = True
    extra = 0
    for position, raw in enumerate(export_lines):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        # (3) every line parses and indices run without gap
        parsed = _parse_line(line.rstrip("\r\n"))
        if parsed is None:
            return _fail(cp, position, recomputed.size, f"entry {recomputed.size}: unreadable line")
        index, raw_entry, entry, stored = parsed
        if index != recomputed.size + extra:
            what = "missing" if index > recomputed.size + extra else "out of order or duplicated"
            at = recomputed.size + extra
            return _fail(cp, position, at, f"entry {at} is {what} (found index {index})")
        if recomputed.size == cp.size:
            extra += 1  # beyond the checkpoint: not covered by its signature
            continue
        try:
            stored_hash = base64.b64decode(stored, validate=True) if stored else None
        except (binascii.Error, ValueError):
            stored_hash = None
        # (4) recompute the leaf hash: of the entry's bytes as exported when they hash to the
        # stored leaf (the common case, no re-serialising), else of its canonical JSON (so an
        # export that was merely re-formatted still verifies)
        leaf = merkle.leaf_hash(raw_entry.encode()) if raw_entry is not None else None
        if leaf is None or leaf != stored_hash:
            try:
                leaf = merkle.leaf_hash(_canonical(entry))
            except (UnicodeEncodeError, ValueError, TypeError):
                return _fail(cp, position, index, f"entry {index}: not canonical JSON")
        if stored_hash is None or len(stored_hash) != merkle.HASH_SIZE:
            claimed_complete = False
        else:
            claimed.append(stored_hash)
            if stored_hash != leaf and first_mismatch is None:
                first_mismatch = index
        recomputed.push(leaf)
        if earlier is not None and recomputed.size == earlier.size:
            earlier_root = recomputed.root()

    n = recomputed.size
    if n < cp.size:
        return _fail(cp, n, n, f"the export ends at {n}: entry {n} and later are missing")
    # (5) the recomputed root is the signed root
    if recomputed.root() != cp.root:
        # (7) localise
        if (
            claimed_complete
            and len(claimed) == n
            and merkle.root_from_leaf_hashes(claimed) == cp.root
        ):
            assert first_mismatch is not None  # equal leaf sets would give equal roots
            return _fail(
                cp,
                n,
                first_mismatch,
                f"entry {first_mismatch} was altered: it does not hash to the leaf the signed "
                "tree holds",
            )
        reasons = ["the entries do not hash to the checkpoint's root"]
        if first_mismatch is not None:
            reasons.append(f"entry {first_mismatch} does not match its stored leaf hash")
        else:
            reasons.append("the stored tree was rewritten too; the bad entry cannot be located")
        return _fail(cp, n, first_mismatch, *reasons)
    # (6) consistent with the earlier checkpoint
    if earlier is not None and earlier_root != earlier.root:
        return _fail(
            cp,
            n,
            None,
            f"not consistent with the earlier checkpoint of size {earlier.size}: history was "
            "rewritten",
        )
    reasons = [f"{n} entries verified against the checkpoint of size {cp.size}"]
    if earlier is not None:
        reasons.append(f"consistent with the earlier checkpoint of size {earlier.size}")
    if extra:
        reasons.append(f"{extra} later entries are not covered by this checkpoint")
    return VerifyReport(True, cp, n, None, tuple(reasons))
