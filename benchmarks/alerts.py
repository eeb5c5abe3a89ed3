"""Benchmark of the alert worker: CPU per log entry of ``AlertWorker.run_once`` on a log of
realistic exchange entries, this tree against ``git archive main`` in the same run.

Two logs, each of one node under exchange load. ``provider``: reads of many citizens (a few of
them consented, by public and private clients), refusals, the node's own records as a consumer
of another node's service, and one heavily read citizen (a quarter of the reads, all in one
volume window: the case whose cost grew with the reads already counted). ``consumer``: per
exchange the consumer's request record and its record of the answer from another node (a
quarter of them about one citizen): entries no rule concerns. Each measurement is a fresh
process (``--child``) importing one tree: it builds the log on a fresh database, then times
``run_once`` with ``time.process_time`` (the process's CPU, OPA's Go threads included; a
PostgreSQL server's own CPU is not in it) and counts the SQL statements it sent. Rounds alternate
main, this tree, main, … and the medians are compared; both trees must raise the same alerts
(a digest of every (rule, citizen, dedup, entry) stored).

    .venv/bin/python benchmarks/alerts.py [--entries 3000] [--rounds 3] [--log both|provider|consumer]
        [--engine auto|regopy]

SQLite always; PostgreSQL too when DATABASE_URL is set (a throw-away database per measurement,
dropped afterwards). Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python benchmarks/alerts.py``, this file's directory is sys.path[0] and the file itself
# would shadow the ``alerts`` package it measures.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import os
import random
import statistics
import subprocess
import tarfile
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE = "JP/GOV/132098"
SERVICE = f"{NODE}/resident-registry/address/v1"
FOREIGN = "JP/GOV/131130/permits/v1"
CLIENTS = [f"{NODE}/municipal-tax", "JP/GOV/131130/welfare", "JP/GOV/131130/pension"]
PRIVATE = ["JP/COM/5555555/tama-gas", "JP/COM/7777777/insurer"]
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _events(n: int, log: str) -> list[Any]:
    return _provider_events(n) if log == "provider" else _consumer_events(n)


def _consumer_events(n: int) -> list[Any]:
    """A consumer node's log: per exchange, its request record and its record of the answer
    (another node's service), under its own codes of the citizens (a quarter one citizen's)."""
    from exchange.ports import AuditEvent

    rng = random.Random(2026)
    out: list[Any] = []
    for i in range(n // 2):
        subject = "tax-heavy-0001" if rng.random() < 0.25 else f"tax-{rng.randrange(5000):06d}"
        for kind, decision in (("request", "info"), ("response", "allow")):
            out.append(
                AuditEvent(
                    time=T0 + timedelta(milliseconds=2 * i),
                    node=NODE,
                    kind=kind,  # type: ignore[arg-type]
                    decision=decision,  # type: ignore[arg-type]
                    client=CLIENTS[0],
                    service=FOREIGN,
                    purpose="taxation",
                    subject=subject,
                    message_id=f"msg-{i:07d}",
                    request_hash=f"req-{i:07d}",
                    basis="statute:jp-local-tax-act/art294",
                    status=200,
                )
            )
    return out


def _provider_events(n: int) -> list[Any]:
    from exchange.ports import AuditEvent

    rng = random.Random(2026)
    out: list[Any] = []
    for i in range(n):
        subject = "rr-heavy-0001" if rng.random() < 0.25 else f"rr-{rng.randrange(5000):06d}"
        client = rng.choice(CLIENTS) if rng.random() < 0.9 else rng.choice(PRIVATE)
        roll = rng.random()
        kind, decision, service, consent = "response", "allow", SERVICE, None
        if roll < 0.03:
            kind, decision = "refusal", "deny"
        elif roll < 0.13:
            consent = f"c-{i}"
        elif roll < 0.23:  # this node as a consumer: its answer from another node
            kind, service, client = "response", FOREIGN, CLIENTS[0]
        out.append(
            AuditEvent(
                time=T0 + timedelta(milliseconds=2 * i),  # ~500 exchanges/s, one 24 h window
                node=NODE,
                kind=kind,  # type: ignore[arg-type]
                decision=decision,  # type: ignore[arg-type]
                client=client,
                service=service,
                purpose="taxation",
                subject=subject,
                consent_id=consent,
                message_id=f"msg-{i:07d}",
                request_hash=f"req-{i:07d}",
                basis=f"consent:{consent}" if consent else "statute:jp-local-tax-act/art294",
                status=200 if decision == "allow" else 403,
            )
        )
    return out


def child(url: str, entries: int, engine_name: str, log_kind: str) -> dict[str, Any]:
    """One measurement in this process, on the tree first on sys.path."""
    import hashlib
    import time

    from sqlalchemy import event, select

    from alerts.store import AlertRow
    from alerts.worker import AlertWorker
    from audit.checkpoint import NoteSigner
    from audit.log import TransparencyLog
    from exchange.db import make_engine, upgrade
    from onceonly.components import COMPONENT_BRANCHES
    from policies.alerts import AlertRules

    engine = make_engine(url)
    upgrade(engine, COMPONENT_BRANCHES["node"])
    log = TransparencyLog(
        engine, log_id=NODE, signer=NoteSigner.generate(f"onceonly.example/{NODE}/audit")
    )
    events = _events(entries, log_kind)
    for at in range(0, len(events), 500):
        log.append_many(events[at : at + 500])
    rules = AlertRules(engine=engine_name)  # type: ignore[arg-type]
    worker = AlertWorker(log, engine, rules, node=NODE)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine, "before_cursor_execute", count)
    cpu = time.process_time()
    wall = time.perf_counter()
    done = worker.run_once()
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    event.remove(engine, "before_cursor_execute", count)
    with engine.connect() as conn:
        rows = sorted(
            f"{r[0]}|{r[1]}|{r[2]}|{r[3]}"
            for r in conn.execute(
                select(AlertRow.rule, AlertRow.subject_key, AlertRow.dedup, AlertRow.entry_index)
            )
        )
    engine.dispose()
    assert done == entries, (done, entries)
    return {
        "engine": rules.engine,
        "cpu_us_per_entry": round(cpu / done * 1e6, 1),
        "wall_us_per_entry": round(wall / done * 1e6, 1),
        "statements_per_batch": round(statements / -(-done // 200), 1),
        "alerts": len(rows),
        "digest": hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16],
    }


def _throwaway(admin_url: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from exchange.db import normalise_url

    admin = make_url(normalise_url(admin_url))
    name = f"oo_bench_alerts_{uuid.uuid4().hex[:10]}"
    eng = create_engine(admin, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with eng.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        eng.dispose()

    return admin.set(database=name).render_as_string(hide_password=False), drop


def _measure(
    tree: Path, backend: str, log: str, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    drop = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'alerts-{uuid.uuid4().hex[:8]}.sqlite'}"
    else:
        url, drop = _throwaway(os.environ["DATABASE_URL"])
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", url]
        cmd += ["--entries", str(args.entries), "--engine", args.engine, "--log", log]
        done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the measurement in {tree} failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        if drop is not None:
            drop()


def _archive_main(into: Path) -> Path:
    tree = into / "main"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "main"], capture_output=True, check=True
    ).stdout
    tar = into / "main.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(tree, filter="data")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine", default="auto", choices=["auto", "regopy", "opa-inprocess"])
    parser.add_argument("--log", default="both", choices=["both", "provider", "consumer"])
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.entries, args.engine, args.log)))
        return
    out: dict[str, Any] = {"benchmark": "alerts", "entries": args.entries, "rounds": args.rounds}
    backends = ["sqlite"] + (["postgresql"] if os.environ.get("DATABASE_URL") else [])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        trees = {"main": _archive_main(tmp), "this": ROOT}
        logs = ["provider", "consumer"] if args.log == "both" else [args.log]
        for backend in backends:
            out[backend] = {}
            for log in logs:
                runs: dict[str, list[dict[str, Any]]] = {"main": [], "this": []}
                for r in range(args.rounds):
                    for name, tree in trees.items():
                        runs[name].append(_measure(tree, backend, log, args, tmp))
                        _log(f"{backend} {log} round {r + 1} {name}: {runs[name][-1]}")
                out[backend][log] = _summary(runs)
    out["loadavg"] = list(os.getloadavg())
    print(json.dumps(out))


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            "engine": results[0]["engine"],
            "cpu_us_per_entry": statistics.median(r["cpu_us_per_entry"] for r in results),
            "cpu_us_per_entry_rounds": [r["cpu_us_per_entry"] for r in results],
            "wall_us_per_entry": statistics.median(r["wall_us_per_entry"] for r in results),
            "statements_per_batch": results[0]["statements_per_batch"],
            "alerts": results[0]["alerts"],
        }
    digests = {r["digest"] for results in runs.values() for r in results}
    summary["same_alerts"] = len(digests) == 1
    summary["cpu_ratio_this_over_main"] = round(
        summary["this"]["cpu_us_per_entry"] / summary["main"]["cpu_us_per_entry"], 3
    )
    return summary


if __name__ == "__main__":
    main()
