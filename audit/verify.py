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
10. The subject map the checkpoint signs (``audit.completeness``) is the one its entries give:
   each subject's count and chain recomputed from the entries' bytes, the compact map's root
   from those — stops a map that leaves a citizen's entries out, even one the log's own key
   signed (only a checkpoint of the current ``subject-map`` format is checked).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import os
import sys
import threading
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool as BrokenExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit import completeness, merkle, restricted
from audit.checkpoint import Checkpoint, NoteError, NoteVerifier, verify_checkpoint
from audit.verify_lines import (
    ChunkResult,
    canonical,
    check_chunk,
    check_packed,
    pack,
    range_pieces,
)
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

    def push(self, level: int, h: bytes) -> None:
        """Add a perfect subtree of ``2**level`` leaves, aligned on its width (``range_pieces``)."""
        self.size += 1 << level
        cur = h
        while self._stack and self._stack[-1][0] == level:
            cur = merkle.node_hash(self._stack.pop()[1], cur)
            level += 1
        self._stack.append((level, cur))

    def copy(self) -> _Tree:
        out = _Tree()
        out._stack, out.size = list(self._stack), self.size
        return out

    def root(self) -> bytes:
        return merkle.fold_compact_range([h for _, h in self._stack])


_canonical = canonical  # the verifier's serialiser (tests pin it to RFC 8785)
CHUNK = 8192
"""Export lines per chunk (a power of two: the chunks' subtrees stay whole, ``range_pieces``)."""


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


class _Subjects:
    """Step 10 over the entries as they stream by: each subject's count and chain, as the
    subject map holds them (``audit.completeness``), from the entries' own bytes."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._keys: dict[str, bytes] = {}
        self._members: dict[bytes, tuple[int, bytes]] = {}

    def see(self, r: ChunkResult) -> None:
        keys, members, leaves = self._keys, self._members, r.leaves
        for index, subject in r.subjects:
            key = keys.get(subject)
            if key is None:
                key = keys[subject] = completeness.subject_key(self.origin, subject)
            at = (index - r.start) * merkle.HASH_SIZE
            count, chain = members.get(key, (0, completeness.ZERO_CHAIN))
            members[key] = (
                count + 1,
                completeness.chain_step(chain, index, leaves[at : at + merkle.HASH_SIZE]),
            )

    @property
    def count(self) -> int:
        return len(self._members)

    def root(self) -> bytes:
        return completeness.compact_root(
            completeness.Member(k, c, ch) for k, (c, ch) in self._members.items()
        )

    @staticmethod
    def signed(cp: Checkpoint) -> bytes | None:
        """The map root ``cp`` signs, None when it signs none of the current format."""
        try:
            return completeness.map_root_of(cp)
        except completeness.CompletenessError:
            return None


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
    workers: int | None = None,
) -> VerifyReport:
    """Check an export (JSON Lines from ``TransparencyLog.export(0, …)``) against a checkpoint.

    ``log_public_key`` is the log's C2SP vkey; ``now``, when given, reports the restricted
    entries overdue for release then (step 9). An export of more than one chunk (``CHUNK``
    lines) is checked by ``workers`` processes (default: one per CPU; 1 checks it here), read
    as they go. Returns a report; never raises for bad input.
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

    walk = _Walk(cp, earlier, now)
    position = 0  # of the chunk's first line in the export
    with contextlib.closing(_scheduled(export_lines, cp.size, workers)) as scheduled:
        for chunk, pending, assumed in scheduled:
            result = _result(chunk, pending, assumed, walk.count, cp.size)
            if result.failure is not None:
                offset, at, reason = result.failure
                return _fail(cp, position + offset, at, reason)
            walk.take(result)
            position += len(chunk)
    return walk.finish()


def _result(
    chunk: list[str | bytes],
    pending: Future[ChunkResult] | None,
    assumed: int,
    start: int,
    cp_size: int,
) -> ChunkResult:
    """A chunk's result, checked here when it was not sent to a worker, was sent with a start
    index that blank lines in an earlier chunk made wrong, or its worker died (killed, out of
    memory: the pool is broken — the check goes on here, it never waits for ever)."""
    if pending is not None and assumed == start:
        try:
            return pending.result()
        except BrokenExecutor:
            pass
    return check_chunk(start, chunk, cp_size)


def _chunks(lines: Iterable[str | bytes]) -> Generator[list[str | bytes]]:
    it = iter(lines)
    while chunk := list(itertools.islice(it, CHUNK)):
        yield chunk


def _scheduled(
    lines: Iterable[str | bytes], cp_size: int, workers: int | None
) -> Generator[tuple[list[str | bytes], Future[ChunkResult] | None, int]]:
    """The export in chunks, each with its result pending in a worker process (when there are
    two chunks or more) and the start index it was sent with (assuming no blank lines).

    At most ``2 * workers + 1`` chunks are in flight, so an export read from a generator (the
    log's own ``export``) is read while the workers check what came before."""
    chunks = _chunks(lines)
    head = list(itertools.islice(chunks, 2))
    workers = _cpus() if workers is None else workers
    if workers < 2 or len(head) < 2:
        for chunk in itertools.chain(head, chunks):
            yield chunk, None, 0
        return
    pool = _pool(workers)
    try:
        window: collections.deque[tuple[list[str | bytes], Future[ChunkResult] | None, int]] = (
            collections.deque()
        )
        assumed = 0
        for chunk in itertools.chain(head, chunks):
            window.append((chunk, _submit(pool, assumed, chunk, cp_size), assumed))
            assumed += len(chunk)
            if len(window) > 2 * workers:
                yield window.popleft()
        yield from window
    finally:  # a failure found early: what is still queued is dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes: forked where that is safe (Linux, no other thread in this process),
    else started afresh."""
    fork = sys.platform == "linux" and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if fork else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context)


def _submit(
    pool: ProcessPoolExecutor, start: int, chunk: list[str | bytes], cp_size: int
) -> Future[ChunkResult] | None:
    """The chunk sent to a worker; None when the pool broke (the chunk is checked here)."""
    try:
        return pool.submit(check_packed, start, pack(chunk), cp_size)
    except BrokenExecutor:
        return None


class _Walk:
    """The chunks' results stitched together in order: the tree, and the first of each finding."""

    def __init__(self, cp: Checkpoint, earlier: Checkpoint | None, now: datetime | None) -> None:
        self.cp, self.earlier, self.now = cp, earlier, now
        self.tree = _Tree()
        self.count = 0  # entries read: the index the next one must have
        self.earlier_root: bytes | None = (
            merkle.EMPTY_ROOT if earlier and earlier.size == 0 else None
        )
        self.claimed: list[bytes] | None = []  # stored leaf hashes, chunk by chunk
        self.first_mismatch: int | None = None
        self.unchecked_columns = 0
        self.column_bad: tuple[int, str] | None = None
        self.releases = _Releases()
        self.subjects = _Subjects(cp.origin)

    def take(self, r: ChunkResult) -> None:
        self._earlier_root(r)
        for level, h in r.pieces:
            self.tree.push(level, h)
        self.count += r.count
        self.claimed = None if self.claimed is None or r.claimed is None else self.claimed
        if self.claimed is not None and r.claimed:
            self.claimed.append(r.claimed)
        if self.first_mismatch is None:
            self.first_mismatch = r.first_mismatch
        self.unchecked_columns += r.unchecked_columns
        if self.column_bad is None:
            self.column_bad = r.column_bad
        # (9) releases of restricted entries, against the entries they release
        for index, entry, leaf in r.releases:
            self.releases.see(index, entry, leaf)
        # (10) each subject's chain over its entries, in index order
        self.subjects.see(r)

    def _earlier_root(self, r: ChunkResult) -> None:
        """(7) the root over the first ``earlier.size`` entries, when this chunk reaches it"""
        if self.earlier is None or self.earlier_root is not None:
            return
        wanted = self.earlier.size - self.tree.size
        if 0 < wanted <= len(r.leaves) // merkle.HASH_SIZE:
            tree = self.tree.copy()
            for level, h in range_pieces(tree.size, _split(r.leaves[: wanted * merkle.HASH_SIZE])):
                tree.push(level, h)
            self.earlier_root = tree.root()

    def finish(self) -> VerifyReport:
        cp, earlier, n = self.cp, self.earlier, self.tree.size
        if n < cp.size:
            return _fail(cp, n, n, f"the export ends at {n}: entry {n} and later are missing")
        # (6) the recomputed root is the signed root
        if self.tree.root() != cp.root:
            return self._localise()
        # (7) consistent with the earlier checkpoint
        if earlier is not None and self.earlier_root != earlier.root:
            return _fail(
                cp,
                n,
                None,
                f"not consistent with the earlier checkpoint of size {earlier.size}: history "
                "was rewritten",
            )
        if self.column_bad is not None:
            at, name = self.column_bad
            return _fail(
                cp, n, at, f"entry {at}: its stored {name} is not the one its signed bytes hold"
            )
        if self.releases.bad is not None:
            at, why = self.releases.bad
            return _fail(cp, n, at, f"entry {at}: {why}")
        if self.subjects.signed(cp) not in (None, self.subjects.root()):
            return _fail(
                cp,
                n,
                None,
                "the subject map the checkpoint signs is not the one its entries give: a "
                "citizen's completeness proof could hide entries about them",
            )
        return self._verified()

    def _localise(self) -> VerifyReport:
        """(8) the first bad entry, when the stored leaf hashes are those the signed root holds"""
        cp, n, first = self.cp, self.tree.size, self.first_mismatch
        claimed = None if self.claimed is None else _split(b"".join(self.claimed))
        if (
            claimed is not None
            and len(claimed) == n
            and merkle.root_from_leaf_hashes(claimed) == cp.root
        ):
            assert first is not None  # equal leaf sets would give equal roots
            return _fail(
                cp,
                n,
                first,
                f"entry {first} was altered: it does not hash to the leaf the signed tree holds",
            )
        reasons = ["the entries do not hash to the checkpoint's root"]
        if first is not None:
            reasons.append(f"entry {first} does not match its stored leaf hash")
        else:
            reasons.append("the stored tree was rewritten too; the bad entry cannot be located")
        return _fail(cp, n, first, *reasons)

    def _verified(self) -> VerifyReport:
        cp, n, earlier = self.cp, self.tree.size, self.earlier
        reasons = [f"{n} entries verified against the checkpoint of size {cp.size}"]
        releases = self.releases
        if releases.hidden:
            reasons.append(
                f"{len(releases.hidden)} restricted entries, {len(releases.released)} of them "
                "released"
            )
        overdue = releases.overdue(self.now)
        if overdue:
            reasons.append(
                f"{len(overdue)} restricted entries are past their release time and not released "
                f"(first: entry {overdue[0]})"
            )
        if self.unchecked_columns:
            reasons.append(
                f"{self.unchecked_columns} entries carried no search columns: those were not "
                "checked"
            )
        if self.subjects.signed(cp) is not None:
            reasons.append(
                f"the subject map it signs is the one its entries give ({self.subjects.count} "
                "subjects)"
            )
        else:
            reasons.append("it signs no subject map of the current format: not checked")
        if earlier is not None:
            reasons.append(f"consistent with the earlier checkpoint of size {earlier.size}")
        if self.count > n:
            reasons.append(f"{self.count - n} later entries are not covered by this checkpoint")
        return VerifyReport(True, cp, n, None, tuple(reasons), overdue)


def _split(blob: bytes) -> list[bytes]:
    return [blob[i : i + merkle.HASH_SIZE] for i in range(0, len(blob), merkle.HASH_SIZE)]
