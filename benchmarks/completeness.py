"""Benchmark of completeness proofs (issue #15): a log of 10^6 entries about 10^5 citizens.

Measured, each on SQLite and (when DATABASE_URL is set) on a throw-away PostgreSQL database:
- the first checkpoint over the whole log, which builds the subject map from every entry;
- a citizen's completeness proof as ``GET /me/accesses`` makes it (``TransparencyLog.completeness``:
  latest checkpoint, the path from the tree in memory, checked before it is sent): p50/p99
  of wall-clock time and of this process's CPU time (the database server's is not in it: a wall
  p99 far above the CPU p99 is waiting — on the server or, on a loaded machine, for a core), and
  its size as JSON;
- the citizen's own check (``verify_record`` over their entries): p50/p99;
- ``audit verify`` of the whole log: export plus verification;
- appends with the index vs without, in the same run, after the rest: rounds of appends — in
  500-entry batches, or single appends (one transaction each) as exchanges make them — each
  round followed by a checkpoint, to the big log (whose map holds every citizen: the entries name
  them again) and to a log of the same entries, in the same tables, that skips the map (a
  subclass used only here; a third log after both keeps either from the end of the indexes);
  ratio with / without, of wall-clock time and of this process's CPU time, for each cadence in
  ``CADENCES``: a checkpoint after every 500 entries (the worst case), then further apart, as
  a node's checkpoint publisher makes them;
- on PostgreSQL, appends beside a checkpoint publisher in another process (as another worker of
  ``onceonly node --workers N`` or another replica is), which signs each time the log grew by
  500 entries: with the map and without, interleaved; the append rate, the rate until a
  checkpoint covered every entry, and the entries a checkpoint covered (a checkpoint takes its
  own lock, not the head's: appends go on during its map work).

    .venv/bin/python benchmarks/completeness.py [--quick] [--only sqlite|postgresql]

``--quick`` scales to 10^5 entries and 10^4 citizens and leaves out the cadence of 50,000 entries
a checkpoint. Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python benchmarks/completeness.py``, this directory is sys.path[0], and its audit.py
# would shadow the ``audit`` package measured here.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection as Connection_
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from audit.checkpoint import NoteSigner
from audit.completeness import verify_record
from audit.log import EntryQuery, TransparencyLog
from audit.subject_map import EMPTY_MAP_ROOT, MapState, TreeUpdate
from audit.verify import verify_export
from exchange.db import is_postgres, make_engine, normalise_url, upgrade
from exchange.ports import AuditEvent

T0 = datetime(2026, 12, 2, tzinfo=UTC)
FILL_BATCH = 10_000
PROOF_SAMPLES = 1000
CITIZEN_SAMPLES = 200
ROUND_BATCH = 500
APPENDED_FROM = 10**7  # the events the append rounds add: after the big log's
# (mode, entries per checkpoint, rounds): the worst case, a checkpoint after every 500-entry
# batch (30 rounds: 10 gave ratios 0.09 apart), then checkpoints further apart, as a node's
# publisher makes them (every ``checkpoint_interval_s``, 30 s by default)
CADENCES = [("batched", 500, 30), ("single", 500, 30), ("batched", 5000, 8)]
CADENCES_FULL_ONLY = [("batched", 50_000, 4)]
# (mode, entries a round, rounds) of appends while another process publishes checkpoints
CONCURRENT = [("batched", 50_000, 6), ("single", 5_000, 4)]
CONCURRENT_QUICK = [("batched", 10_000, 2), ("single", 1_000, 2)]
PROOF_P99_TARGET_MS = 5.0
APPEND_RATIO_TARGET = 0.7


class _NoMapLog(TransparencyLog):
    """The baseline only: checkpoints that commit to no subject map."""

    def _advance_subject_map(
        self,
        conn: Connection,
        size: int,
        root: bytes,
        signed: MapState | None,
        before_writes: Callable[[], None] | None = None,
    ) -> TreeUpdate:
        return TreeUpdate(MapState(0, EMPTY_MAP_ROOT), size, EMPTY_MAP_ROOT)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _event(i: int, citizens: int) -> AuditEvent:
    return AuditEvent(
        time=T0 + timedelta(milliseconds=i),
        node="JP/GOV/132098/resident-registry",
        kind="request" if i % 7 else "refusal",
        decision="allow" if i % 7 else "deny",
        client=f"JP/GOV/132098/dept-{i % 13}",
        service="JP/GOV/132098/resident-registry/address",
        purpose="tax-assessment",
        subject=f"ps-{(i * 7919) % citizens:08d}",
        message_id=f"m-{i:010d}",
        basis="地方税法第294条",
    )


def _events(start: int, n: int, citizens: int) -> Iterator[AuditEvent]:
    return (_event(i, citizens) for i in range(start, start + n))


def _stats_ms(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return {"median_ms": round(statistics.median(ms), 3), "p99_ms": round(p99, 3)}


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _append(
    log: TransparencyLog, start: int, citizens: int, entries: int, *, batched: bool
) -> None:
    """``entries`` appended in 500-entry batches, or one transaction each as exchanges append."""
    for at in range(start, start + entries, ROUND_BATCH):
        if batched:
            log.append_many(_events(at, ROUND_BATCH, citizens))
        else:
            for event in _events(at, ROUND_BATCH, citizens):
                log.append(event)


def _round(
    log: TransparencyLog, start: int, citizens: int, entries: int, *, batched: bool
) -> tuple[float, float]:
    """One round: ``entries`` appended — in 500-entry batches, or one transaction each as
    exchanges append — then a checkpoint; the seconds it took, wall-clock and CPU of this
    process."""
    t, cpu = time.perf_counter(), time.process_time()
    _append(log, start, citizens, entries, batched=batched)
    log.publish_checkpoint(T0 + timedelta(days=2, seconds=start - APPENDED_FROM))
    return time.perf_counter() - t, time.process_time() - cpu


def _append_ratio(
    big: TransparencyLog,
    baseline: TransparencyLog,
    citizens: int,
    cadences: list[tuple[str, int, int]],
) -> dict[str, Any]:
    """Appends to ``big`` (the log of ``n`` entries, its map of every citizen) against appends
    to ``baseline`` (the same entries without a map, in the same tables), for each (mode,
    entries per checkpoint, rounds). The entries name the citizens of ``big`` again,
    as a municipality's log does: each checkpoint updates members at the depth of the full map."""
    out: dict[str, Any] = {"target_ratio": APPEND_RATIO_TARGET}
    start = APPENDED_FROM  # past the big log's events: new message ids, the same citizens
    for mode, entries, rounds in cadences:
        spent = {"with": 0.0, "without": 0.0}
        cpu = {"with": 0.0, "without": 0.0}
        pair = (("with", big), ("without", baseline))
        for r in range(rounds):  # interleaved, so drift on the machine hits both alike
            for name, log in pair if r % 2 == 0 else pair[::-1]:  # neither always goes first
                wall, used = _round(log, start, citizens, entries, batched=mode == "batched")
                spent[name] += wall
                cpu[name] += used
            start += entries
        n = rounds * entries
        rate = {k: round(n / v) for k, v in spent.items()}
        out[f"{mode}_{entries}_per_checkpoint"] = {
            "rounds": rounds,
            "entries_per_s_with_index": rate["with"],
            "entries_per_s_without_index": rate["without"],
            "ratio": round(rate["with"] / rate["without"], 3),
            "cpu_ms_per_round_with_index": round(cpu["with"] * 1000 / rounds, 1),
            "cpu_ms_per_round_without_index": round(cpu["without"] * 1000 / rounds, 1),
            "cpu_ratio": round(cpu["without"] / cpu["with"], 3),
        }
        _log(f"appends, {mode}, {entries} a checkpoint: {out[f'{mode}_{entries}_per_checkpoint']}")
    return out


def _publisher(
    pipe: Connection_, url: str, log_id: str, skey: str, with_map: bool, every: int
) -> None:
    """A replica's checkpoint publisher in a process of its own (as another worker of
    ``onceonly node --workers N`` or another replica is): on "run", a checkpoint each time the
    log grew by ``every`` entries, until "stop"; then one over the whole log, and its figures
    (checkpoints, CPU seconds of this process in them, not in polling the head) go back."""
    engine = make_engine(url)
    cls = TransparencyLog if with_map else _NoMapLog
    log = cls(engine, log_id=log_id, signer=NoteSigner.from_skey(skey))
    log.publish_checkpoint(datetime.now(UTC))  # the map's tree into this process's memory
    log.completeness(["ps-00000000"], datetime.now(UTC))
    pipe.send("ready")
    while pipe.recv() == "run":
        last, made, cpu = log.size(), 0, 0.0
        while not pipe.poll():
            if log.size() - last < every:
                time.sleep(0.001)
                continue
            began = time.process_time()
            last = log.publish_checkpoint(datetime.now(UTC)).size
            cpu += time.process_time() - began
            made += 1
        pipe.recv()
        began = time.process_time()
        log.publish_checkpoint(datetime.now(UTC))
        pipe.send((made + 1, cpu + time.process_time() - began))
    engine.dispose()


def _concurrent_round(
    log: TransparencyLog, pipe: Connection_, start: int, citizens: int, entries: int, batched: bool
) -> tuple[float, float, int, float]:
    """Appends here while the publisher process signs checkpoints: the seconds the appends took,
    the seconds until a checkpoint covered them all, the checkpoints signed and the publisher's
    CPU seconds."""
    pipe.send("run")
    t = time.perf_counter()
    _append(log, start, citizens, entries, batched=batched)
    appended = time.perf_counter() - t
    pipe.send("stop")
    made, cpu = pipe.recv()
    return appended, time.perf_counter() - t, int(made), float(cpu)


def _concurrent_ratio(
    url: str,
    skey: str,
    logs: dict[str, TransparencyLog],
    citizens: int,
    cadences: list[tuple[str, int, int]],
) -> dict[str, Any]:
    """Appends from this process while another process publishes checkpoints (PostgreSQL: a
    checkpoint takes its own lock, so appends go on during its map work), with the map and
    without, interleaved; for each (mode, entries a round, rounds)."""
    ctx = multiprocessing.get_context("spawn")
    pipes: dict[str, Connection_] = {}
    procs = []
    for name, log in logs.items():
        here, there = ctx.Pipe()
        proc = ctx.Process(
            target=_publisher,
            args=(there, url, log.log_id, skey, name == "with", ROUND_BATCH),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        pipes[name] = here
    for pipe in pipes.values():
        if pipe.recv() != "ready":
            raise RuntimeError("a publisher process did not start")
    out: dict[str, Any] = {"target_ratio": APPEND_RATIO_TARGET, "checkpoint_every": ROUND_BATCH}
    start = APPENDED_FROM * 2
    for mode, entries, rounds in cadences:
        spent = {k: [0.0, 0.0, 0.0, 0.0] for k in logs}
        pair = list(logs)
        for r in range(rounds):
            for name in pair if r % 2 == 0 else pair[::-1]:
                got = _concurrent_round(
                    logs[name], pipes[name], start, citizens, entries, mode == "batched"
                )
                spent[name] = [a + b for a, b in zip(spent[name], got, strict=True)]
            start += entries
        n = rounds * entries
        appended = {k: round(n / v[0]) for k, v in spent.items()}
        covered = {k: round(n / v[1]) for k, v in spent.items()}
        out[f"{mode}_{entries}_a_round"] = {
            "rounds": rounds,
            "appended_per_s_with_index": appended["with"],
            "appended_per_s_without_index": appended["without"],
            "ratio": round(appended["with"] / appended["without"], 3),
            "checkpointed_per_s_with_index": covered["with"],
            "checkpointed_per_s_without_index": covered["without"],
            "checkpointed_ratio": round(covered["with"] / covered["without"], 3),
            "entries_per_checkpoint_with_index": round(n / spent["with"][2]),
            "entries_per_checkpoint_without_index": round(n / spent["without"][2]),
            "publisher_cpu_ms_per_checkpoint_with_index": round(
                spent["with"][3] * 1000 / spent["with"][2], 1
            ),
            "publisher_cpu_ms_per_checkpoint_without_index": round(
                spent["without"][3] * 1000 / spent["without"][2], 1
            ),
        }
        _log(f"appends beside a publisher, {mode}: {out[f'{mode}_{entries}_a_round']}")
    for pipe in pipes.values():
        pipe.send("quit")
    for proc in procs:
        proc.join(60)
    return out


def _proofs(log: TransparencyLog, citizens: int) -> dict[str, Any]:
    rng = random.Random(7)
    now = T0 + timedelta(days=1)
    samples, cpu, sizes = [], [], []
    for _ in range(PROOF_SAMPLES):
        subject = f"ps-{rng.randrange(citizens):08d}"
        t, c = time.perf_counter(), time.process_time()
        cp, proofs = log.completeness([subject], now)
        samples.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        sizes.append(len(json.dumps([p.to_json() for p in proofs])))
    checks = []
    for _ in range(CITIZEN_SAMPLES):
        subject = f"ps-{rng.randrange(citizens):08d}"
        cp, proofs = log.completeness([subject], now)
        page = log.search(EntryQuery(subjects=frozenset({subject})), limit=1000)
        entries = [(e.index, e.record) for e in page.entries]
        t = time.perf_counter()
        verify_record(cp.note, log.verifier(), proofs, entries)
        checks.append(time.perf_counter() - t)
    stats = _stats_ms(samples)
    return {
        "proof": stats | {"target_p99_ms": PROOF_P99_TARGET_MS},
        "proof_cpu": _stats_ms(cpu),
        "proof_json_bytes_mean": round(statistics.mean(sizes)),
        "citizen_verify": _stats_ms(checks),
    }


def bench_backend(
    name: str, url: str, n: int, citizens: int, cadences: list[tuple[str, int, int]]
) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade(engine)
    signer = NoteSigner.generate("bench.onceonly.example/completeness")
    log = TransparencyLog(engine, log_id="big", signer=signer)
    # the appends' baseline: the same entries, no map (filled here, untimed, so that appends to
    # both go into indexes of the same size and shape)
    baseline = _NoMapLog(engine, log_id="without-map", signer=signer)
    out: dict[str, Any] = {"entries": n, "citizens": citizens}
    fill = 0.0
    for start in range(0, n, FILL_BATCH):
        fill += _timed(lambda s=start: log.append_many(_events(s, FILL_BATCH, citizens)))  # type: ignore[misc]
        baseline.append_many(_events(start, FILL_BATCH, citizens))
    # a third log whose id sorts after both: rows appended at the end of an index take the
    # database's fast path for the rightmost page (measured: a 500-entry batch ~10 % faster),
    # so with both logs in the middle neither has it — as with several logs in one database
    TransparencyLog(engine, log_id="zz-last", signer=signer).append(_event(0, citizens))
    baseline.sign_checkpoint(T0 + timedelta(days=1))
    out["fill_entries_per_s"] = round(n / fill)
    _log(f"{name}: filled {n} entries in {fill:.1f} s")
    out["first_checkpoint_s"] = round(
        _timed(lambda: log.sign_checkpoint(T0 + timedelta(days=1))), 2
    )
    _log(f"{name}: first checkpoint (map over every entry) {out['first_checkpoint_s']} s")
    if engine.dialect.name == "postgresql":
        # tables bulk-filled seconds ago have no planner statistics yet (autovacuum's analyze
        # catches up within a minute on a log growing at a normal pace); without them the
        # planner picks scans for the proof's lookups (measured: p50 27 ms instead of 2 ms)
        with engine.begin() as conn:
            for table in ("audit_entries", "audit_nodes", "audit_checkpoints", "audit_heads"):
                conn.execute(text(f"ANALYZE {table}"))
            for table in ("audit_subject_members", "audit_restricted"):
                conn.execute(text(f"ANALYZE {table}"))
    out |= _proofs(log, citizens)
    _log(f"{name}: proofs {out['proof']}")
    cp = log.latest_checkpoint()
    assert cp is not None
    t = time.perf_counter()
    report = verify_export(cp.note, log.export(0, cp.size), log.vkey())
    out["audit_verify_s"] = round(time.perf_counter() - t, 2)
    out["audit_verify_ok"] = bool(report)
    _log(f"{name}: audit verify {out['audit_verify_s']} s ({report.reasons[0]})")
    out["appends"] = _append_ratio(log, baseline, citizens, cadences)
    if engine.dialect.name == "postgresql":
        logs = {"with": log, "without": baseline}
        out["appends_beside_a_publisher"] = _concurrent_ratio(
            url, signer.skey(), logs, citizens, CONCURRENT_QUICK if n < 10**6 else CONCURRENT
        )
    engine.dispose()
    return out


def _on_postgres(pg: str, run: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    admin_url = make_url(normalise_url(pg))
    db = f"oo_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    try:
        return run(admin_url.set(database=db).render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10^5 entries, 10^4 citizens")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="one backend only")
    args = parser.parse_args()
    n, citizens = (10**5, 10**4) if args.quick else (10**6, 10**5)
    cadences = CADENCES if args.quick else CADENCES + CADENCES_FULL_ONLY
    out: dict[str, Any] = {"benchmark": "completeness", "quick": args.quick}
    if args.only == "postgresql":
        out["sqlite"] = "skipped: --only postgresql"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
            out["sqlite"] = bench_backend("sqlite", url, n, citizens, cadences)
    pg = os.environ.get("DATABASE_URL")
    if args.only == "sqlite":
        out["postgresql"] = "skipped: --only sqlite"
    elif pg and is_postgres(pg):
        out["postgresql"] = _on_postgres(
            pg, lambda u: bench_backend("postgresql", u, n, citizens, cadences)
        )
    else:
        out["postgresql"] = "skipped: DATABASE_URL not set"
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
