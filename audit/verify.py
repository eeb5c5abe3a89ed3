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
5. The search columns the export carries (``audit.columns``: subject, client, time, …) are the ones
   the entry's bytes imply — stops an entry re-pointed in the database (its ``subject`` rewritten,
   say) to hide it from a citizen's view or an auditor's search while every proof still checks.
6. The root recomputed over the first ``size`` entries equals the checkpoint's root — stops any
   change, insertion, deletion or reordering at all (the decisive check).
7. Consistency: the root over the first ``earlier.size`` entries equals the earlier checkpoint's
   root — stops a log that rewrote history between two checkpoints (a fork).
8. Localisation, only when 6 failed: if the leaf hashes the export carries (read from the stored
   tree) hash up to the signed root, they are authentic, and the first entry whose recomputed hash
   differs is the first bad entry. If they do not, the tree itself was rewritten and the report
   says so, naming the first entry that disagrees with its stored hash when there is one.
9. Every release entry (``audit.restricted``) names an earlier restricted entry by index and
   leaf hash, opens its subject commitment, comes no earlier than its release time, and no entry
   is released twice — stops a restricted entry released to the wrong citizen or too early (its
   hidden subject, salt or release time rewritten in the database before release). Given
   ``now``, restricted entries past their release time that no release entry releases are
   reported (``overdue``): withheld from their citizens, whether or not the log's own table
   still lists them. They do not fail the verification (the log is intact), they are a finding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit import merkle, restricted
from audit.checkpoint import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from audit.columns import INDEX_COLUMNS, column_mismatch, columns_json, index_columns
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
    overdue: tuple[int, ...] = ()
    """Restricted entries past their release time that no release entry releases (step 9)."""

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
    r'\{"index":(0|[1-9][0-9]{0,18}),"leaf_hash":(?:"([A-Za-z0-9+/=]{0,64})"|null),'
)
_COLUMNS_KEY = '"columns":'
_ENTRY_KEY = '"entry":'
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class _Line:
    index: int
    raw_entry: str | None  # the entry's exact text when the line is in the form export writes
    entry: dict[str, Any]
    stored_hash: str | None
    columns: dict[str, Any] | None  # the stored search columns, when the export carries them


def _parse_exact(line: str) -> _Line | None:
    """The line in the exact form ``TransparencyLog.export`` writes, keeping the entry's text as
    written (checked to be a JSON object on its own, so what is hashed is what a reader sees)."""
    m = _LINE_PREFIX.match(line)
    if m is None or not line.endswith("}"):
        return None
    pos, columns = m.end(), None
    try:
        if line.startswith(_COLUMNS_KEY, pos):
            columns, pos = _DECODER.raw_decode(line, pos + len(_COLUMNS_KEY))
            if not line.startswith(",", pos):
                return None
            pos += 1
        if not line.startswith(_ENTRY_KEY, pos):
            return None
        raw = line[pos + len(_ENTRY_KEY) : -1]
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not (columns is None or isinstance(columns, dict)):
        return None
    return _Line(int(m[1]), raw, entry, m[2], columns)


def _parse_line(line: str) -> _Line | None:
    """One export line, or None if unreadable."""
    exact = _parse_exact(line)
    if exact is not None:
        return exact
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
    return _Line(index, None, entry, stored if isinstance(stored, str) else None, columns)


def _stored_columns(columns: dict[str, Any]) -> tuple[Any, ...]:
    """An export line's columns in ``INDEX_COLUMNS`` order (a missing one reads as absent)."""
    return tuple(columns.get(name, _MISSING) for name in INDEX_COLUMNS)


_MISSING = object()


class _Releases:
    """Step 9 over the entries as they stream by: restricted entries seen, releases checked."""

    def __init__(self) -> None:
        self.hidden: dict[int, tuple[dict[str, Any], bytes]] = {}
        self.released: set[int] = set()
        self.bad: tuple[int, str] | None = None

    def see(self, index: int, entry: dict[str, Any], leaf: bytes) -> None:
        if restricted.is_restricted(entry):
            self.hidden[index] = (entry, leaf)
            return
        try:
            release = restricted.parse_release(entry)
            if release is None:
                return
            shown = self.hidden.get(release.releases)
            if shown is None:
                raise restricted.ReleaseError(
                    f"it releases entry {release.releases}, which is no restricted entry before it"
                )
            if release.releases in self.released:
                raise restricted.ReleaseError(f"entry {release.releases} was already released")
            restricted.check_release(release, index, *shown)
            self.released.add(release.releases)
        except restricted.ReleaseError as exc:
            if self.bad is None:
                self.bad = (index, str(exc))

    def overdue(self, now: datetime | None) -> tuple[int, ...]:
        if now is None:
            return ()
        return tuple(
            index
            for index, (entry, _) in sorted(self.hidden.items())
            if index not in self.released
            and ((until := restricted.restricted_until(entry)) is None or until <= now)
        )


def _fail(
    cp: Checkpoint | None, entries: int, first_bad: int | None, *reasons: str
) -> VerifyReport:
    return VerifyReport(False, cp, entries, first_bad, tuple(reasons))


def verify_export(
    checkpoint_text: str | bytes,
    export_lines: Iterable[str | bytes],
    log_public_key: str | NoteVerifier,
    earlier_checkpoint: str | bytes | None = None,
    *,
    now: datetime | None = None,
) -> VerifyReport:
    """Check an export (JSON Lines from ``TransparencyLog.export(0, …)``) against a checkpoint.

    ``log_public_key`` is the log's C2SP vkey; ``now``, when given, reports the restricted
    entries overdue for release then (step 9). Returns a report; never raises for bad input.
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
    claimed: list[bytes] = []  # hashed into a root only if step 6 fails
    earlier_root: bytes | None = merkle.EMPTY_ROOT if earlier and earlier.size == 0 else None
    first_mismatch: int | None = None
    claimed_complete = True
    extra = 0
    unchecked_columns = 0
    column_bad: tuple[int, str] | None = None
    releases = _Releases()
    for position, raw in enumerate(export_lines):
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        # (3) every line parses and indices run without gap
        parsed = _parse_line(line.rstrip("\r\n"))
        if parsed is None:
            return _fail(cp, position, recomputed.size, f"entry {recomputed.size}: unreadable line")
        index, raw_entry, entry, stored = (
            parsed.index,
            parsed.raw_entry,
            parsed.entry,
            parsed.stored_hash,
        )
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
        # (5) the stored search columns are those the entry's bytes imply
        if parsed.columns is None:
            unchecked_columns += 1
        elif column_bad is None and parsed.columns != columns_json(index_columns(entry)):
            name = column_mismatch(entry, _stored_columns(parsed.columns))
            column_bad = (index, name or "columns")
        # (9) releases of restricted entries, against the entries they release
        if entry.get("kind") == restricted.RELEASE_KIND or "subject_commitment" in entry:
            releases.see(index, entry, leaf)
        recomputed.push(leaf)
        if earlier is not None and recomputed.size == earlier.size:
            earlier_root = recomputed.root()

    n = recomputed.size
    if n < cp.size:
        return _fail(cp, n, n, f"the export ends at {n}: entry {n} and later are missing")
    # (6) the recomputed root is the signed root
    if recomputed.root() != cp.root:
        # (8) localise
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
    # (7) consistent with the earlier checkpoint
    if earlier is not None and earlier_root != earlier.root:
        return _fail(
            cp,
            n,
            None,
            f"not consistent with the earlier checkpoint of size {earlier.size}: history was "
            "rewritten",
        )
    if column_bad is not None:
        at, name = column_bad
        return _fail(
            cp, n, at, f"entry {at}: its stored {name} is not the one its signed bytes hold"
        )
    if releases.bad is not None:
        at, why = releases.bad
        return _fail(cp, n, at, f"entry {at}: {why}")
    reasons = [f"{n} entries verified against the checkpoint of size {cp.size}"]
    if releases.hidden:
        reasons.append(
            f"{len(releases.hidden)} restricted entries, {len(releases.released)} of them released"
        )
    overdue = releases.overdue(now)
    if overdue:
        reasons.append(
            f"{len(overdue)} restricted entries are past their release time and not released "
            f"(first: entry {overdue[0]})"
        )
    if unchecked_columns:
        reasons.append(
            f"{unchecked_columns} entries carried no search columns: those were not checked"
        )
    if earlier is not None:
        reasons.append(f"consistent with the earlier checkpoint of size {earlier.size}")
    if extra:
        reasons.append(f"{extra} later entries are not covered by this checkpoint")
    return VerifyReport(True, cp, n, None, tuple(reasons), overdue)
