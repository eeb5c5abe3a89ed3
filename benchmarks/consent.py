"""Consent checks per second and their p99 at 10^6 stored consents, against a bare PK lookup.

Issue 5 "Tests and measurements": target p99 < 2 ms for a consent check on PostgreSQL. Usage::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python benchmarks/consent.py
    .venv/bin/python benchmarks/consent.py --quick        # 10^5 consents

A throw-away database is created next to ``DATABASE_URL``'s and dropped afterwards (without
``DATABASE_URL`` a SQLite file is used and the JSON says so). Consents are bulk-loaded with
``COPY`` (PostgreSQL) or ``executemany`` (SQLite). Measured in one run, one client thread:

* ``pk_lookup`` — the baseline: ``SELECT * FROM consent_consents WHERE id = …`` on the same engine;
* ``check`` — ``ConsentService.check`` without an artefact (store only);
* ``check_with_artefact`` — the same plus verifying the signed artefact (Ed25519);
* ``use`` — ``ConsentService.use`` on standing consents (row lock, use row, audit call).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# This file is named like the package it measures: keep its own directory off the import path,
# or ``import consent`` would import this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from consent.artefact import ConsentArtefactClaims, ConsentIssuerKey  # noqa: E402
from consent.lifecycle import ConsentService  # noqa: E402
from exchange.db import is_postgres, make_engine, normalise_url, upgrade  # noqa: E402
from exchange.identifiers import ClientId, ServiceId  # noqa: E402
from exchange.ports import AuditEvent, ConsentQuery  # noqa: E402

TARGET_P99_MS = 2.0
FULL_N = 1_000_000
QUICK_N = 100_000
SAMPLE = 2_000
ITERATIONS = 5_000
USE_ITERATIONS = 1_000
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CLIENTS = [f"JP/COM/01000{i:02d}/billing" for i in range(20)]
SERVICE = "JP/GOV/132098/resident-registry/address"
FIELDS = ["address", "postal_code"]
_COLUMNS = (
    "id, subject, client, services, purpose_code, purpose_ja, purpose_en, fields, valid_from, "
    "valid_until, mode, max_uses, min_interval_s, data_retention_days, legal_text_version, "
    "status, created_at, updated_at, use_count, last_used_at, request_id, artefact, version"
)


class CountingAudit:
    def __init__(self) -> None:
        self.count = 0

    def record(self, event: AuditEvent) -> None:
        self.count += 1


def _row(i: int, cid: str, artefact: str) -> tuple[Any, ...]:
    client = CLIENTS[i % len(CLIENTS)]
    return (
        cid,
        f"citizen-{i}",
        client,
        json.dumps([SERVICE]),
        "utility-address-change",
        "住所変更のため",
        "For an address change",
        json.dumps(FIELDS),
        NOW - timedelta(days=1),
        NOW + timedelta(days=365),
        "standing",
        None,
        None,
        30,
        "2026-10",
        "active",
        NOW - timedelta(days=1),
        NOW - timedelta(days=1),
        0,
        None,
        None,
        artefact,
        0,
    )


def _claims(i: int, cid: str) -> ConsentArtefactClaims:
    return ConsentArtefactClaims(
        iss="bench",
        cid=cid,
        sub=f"citizen-{i}",
        client=CLIENTS[i % len(CLIENTS)],
        services=(SERVICE,),
        purpose="utility-address-change",
        fields=tuple(FIELDS),
        nbf=int((NOW - timedelta(days=1)).timestamp()),
        exp=int((NOW + timedelta(days=365)).timestamp()),
        iat=int(NOW.timestamp()),
        mode="standing",
        retention_days=30,
        legal_text_version="2026-10",
    )


def _load(
    engine: Engine, n: int, key: ConsentIssuerKey, sample_idx: set[int]
) -> dict[int, tuple[str, str]]:
    """Bulk-load ``n`` consents; the sampled ones get real signed artefacts."""
    sampled: dict[int, tuple[str, str]] = {}
    batch = 50_000
    raw = engine.raw_connection()
    try:
        for start in range(0, n, batch):
            rows = []
            for i in range(start, min(n, start + batch)):
                cid = str(uuid.uuid4())
                artefact = "-"
                if i in sample_idx:
                    artefact = key.sign_claims(_claims(i, cid))
                    sampled[i] = (cid, artefact)
                rows.append(_row(i, cid, artefact))
            cur = raw.cursor()
            if engine.dialect.name == "postgresql":
                with cur.copy(f"COPY consent_consents ({_COLUMNS}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for r in rows:
                        copy.write_row(r)
            else:
                placeholders = ", ".join("?" for _ in range(23))
                cur.executemany(
                    # constants only, no input: S608 does not apply
                    f"INSERT INTO consent_consents ({_COLUMNS}) VALUES ({placeholders})",  # noqa: S608
                    [
                        tuple(
                            v.replace(tzinfo=None).isoformat(sep=" ")
                            if isinstance(v, datetime)
                            else v
                            for v in r
                        )
                        for r in rows
                    ],
                )
            cur.close()
            raw.commit()
        if engine.dialect.name == "postgresql":
            cur = raw.cursor()
            cur.execute("ANALYZE consent_consents")
            cur.close()
            raw.commit()
    finally:
        raw.close()
    return sampled


def _measure(fn: Callable[[int], object], iterations: int) -> dict[str, float]:
    latencies: list[float] = []
    start = time.perf_counter()
    for k in range(iterations):
        t0 = time.perf_counter()
        fn(k)
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    latencies.sort()
    return {
        "ops_s": round(iterations / total, 1),
        "median_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
    }


def _database(base: str | None) -> tuple[str, Callable[[], None]]:
    if base and is_postgres(base):
        admin = create_engine(make_url(normalise_url(base)), isolation_level="AUTOCOMMIT")
        name = f"oo_bench_consent_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        url = make_url(normalise_url(base)).set(database=name).render_as_string(False)
        return url, drop
    tmp = Path(tempfile.mkdtemp(prefix="oo-bench-consent-"))
    return f"sqlite:///{tmp / 'consent.sqlite'}", lambda: None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10^5 consents instead of 10^6")
    parser.add_argument("--n", type=int, default=None, help="number of stored consents")
    args = parser.parse_args(argv)
    n = args.n or (QUICK_N if args.quick else FULL_N)
    url, drop = _database(os.environ.get("DATABASE_URL"))
    engine = make_engine(url)
    try:
        upgrade(engine)
        key = ConsentIssuerKey.generate(issuer="bench")
        rng = random.Random(5)
        sample_idx = set(rng.sample(range(n), min(SAMPLE, n)))
        t0 = time.perf_counter()
        sampled = _load(engine, n, key, sample_idx)
        load_s = time.perf_counter() - t0
        print(f"loaded {n} consents in {load_s:.1f} s", file=sys.stderr)
        audit = CountingAudit()
        service = ConsentService(engine, issuer_key=key, audit=audit)
        items = list(sampled.items())
        service_id = ServiceId.parse(SERVICE)
        clients = {c: ClientId.parse(c) for c in CLIENTS}

        def q(k: int, *, artefact: bool) -> ConsentQuery:
            i, (cid, art) = items[k % len(items)]
            return ConsentQuery(
                consent_id=cid,
                artefact=art if artefact else None,
                subject=f"citizen-{i}",
                client=clients[CLIENTS[i % len(CLIENTS)]],
                service=service_id,
                purpose="utility-address-change",
                fields=("address",),
                now=NOW,
                message_id=f"bench-{k}",
            )

        plain = [q(k, artefact=False) for k in range(ITERATIONS)]
        signed = [q(k, artefact=True) for k in range(ITERATIONS)]
        uses = [q(k, artefact=False) for k in range(USE_ITERATIONS)]
        stmt = text("SELECT * FROM consent_consents WHERE id = :id")

        def pk(k: int) -> object:
            with engine.connect() as conn:
                return conn.execute(stmt, {"id": plain[k].consent_id}).one()

        def check(k: int) -> object:
            decision = service.check(plain[k])
            assert decision, decision.reasons
            return decision

        def check_signed(k: int) -> object:
            decision = service.check(signed[k])
            assert decision, decision.reasons
            return decision

        def use(k: int) -> object:
            decision = service.use(uses[k])
            assert decision, decision.reasons
            return decision

        for k in range(300):  # warm-up: pool, statement caches
            pk(k)
            check(k)
        results = {
            "pk_lookup": _measure(pk, ITERATIONS),
            "check": _measure(check, ITERATIONS),
            "check_with_artefact": _measure(check_signed, ITERATIONS),
            "use": _measure(use, USE_ITERATIONS),
        }
        report = {
            "benchmark": "consent",
            "backend": engine.dialect.name,
            "stored_consents": n,
            "load_s": round(load_s, 1),
            "iterations": ITERATIONS,
            **results,
            "check_p99_vs_pk_p99": round(
                results["check"]["p99_ms"] / results["pk_lookup"]["p99_ms"], 2
            ),
            "check_ops_vs_pk_ops": round(
                results["check"]["ops_s"] / results["pk_lookup"]["ops_s"], 3
            ),
            "target_p99_ms": TARGET_P99_MS,
            "meets_target": results["check"]["p99_ms"] < TARGET_P99_MS,
            "audit_events": audit.count,
        }
        print(json.dumps(report))
    finally:
        engine.dispose()
        drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
