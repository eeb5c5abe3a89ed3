"""Benchmark: seeding the reference registries, and SQL adapter call latency.

1. Seed N citizens (100,000; ``--quick``: 10,000) into the eight reference registries, each in
   its own SQLite database, plus the pseudonym store — vs the baseline of a raw ``executemany`` of
   the same number of rows into one table, measured in the same run.
2. ``SqlAdapter.call`` latency (p50/p99) for ``resident-registry/person`` vs a raw SQLAlchemy
   lookup of the same row on the same engine.

Prints one JSON object on its last line. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# This file is named like the package it measures: keep its own directory off the import path,
# or ``import adapters`` would import this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from sqlalchemy import (  # noqa: E402
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url  # noqa: E402

from adapters.reference import REGISTRY_TABLES, registry  # noqa: E402
from adapters.seed import PSEUDONYMS, seed  # noqa: E402
from exchange.db import is_postgres, make_engine, normalise_url, upgrade  # noqa: E402
from exchange.identifiers import ClientId, ServiceId  # noqa: E402
from exchange.ports import AdapterRequest  # noqa: E402

LATENCY_CALLS = 2_000
BASELINE_BATCH = 5_000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _baseline(url: str, rows: int) -> float:
    engine = make_engine(url)
    md = MetaData()
    t = Table(
        "baseline",
        md,
        Column("id", String(32), primary_key=True),
        Column("a", String(64)),
        Column("b", String(200)),
        Column("c", Integer),
    )
    md.create_all(engine)
    started = time.perf_counter()
    for start in range(0, rows, BASELINE_BATCH):
        batch = [
            {"id": f"{i:020X}", "a": "町田　花子", "b": "東京都町田市森野二丁目1番1号", "c": i}
            for i in range(start, min(rows, start + BASELINE_BATCH))
        ]
        with engine.begin() as conn:
            conn.execute(insert(t), batch)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def _latency(url: str) -> dict[str, float]:
    engine = make_engine(url)
    rr = registry("resident-registry")
    adapter = rr.adapter(engine)
    table = REGISTRY_TABLES["resident-registry"]
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(select(table.c.resident_id).limit(20_000))]
    rng = random.Random(1)
    subjects = [rng.choice(ids) for _ in range(LATENCY_CALLS)]
    fields = frozenset({"name", "name_kana", "birth_date"})
    service = ServiceId.parse(f"{rr.client_id}/person/v1")
    client = ClientId.parse("JP/GOV/132098/municipal-tax")

    async def adapter_calls() -> list[float]:
        out = []
        for s in subjects:
            req = AdapterRequest(service, client, "GET", "", "", s, "taxation", "m", fields)
            t0 = time.perf_counter()
            await adapter.call(req)
            out.append(time.perf_counter() - t0)
        return out

    adapter_s = asyncio.run(adapter_calls())
    raw_s = []
    stmt = select(table.c.name, table.c.name_kana, table.c.birth_date)
    for s in subjects:
        t0 = time.perf_counter()
        with engine.connect() as conn:
            conn.execute(stmt.where(table.c.resident_id == s)).mappings().first()
        raw_s.append(time.perf_counter() - t0)
    engine.dispose()
    ms = 1000.0
    return {
        "calls": LATENCY_CALLS,
        "adapter_p50_ms": round(statistics.median(adapter_s) * ms, 3),
        "adapter_p99_ms": round(_percentile(adapter_s, 0.99) * ms, 3),
        "raw_p50_ms": round(statistics.median(raw_s) * ms, 3),
        "raw_p99_ms": round(_percentile(raw_s, 0.99) * ms, 3),
        "p50_ratio_adapter_over_raw": round(
            statistics.median(adapter_s) / statistics.median(raw_s), 2
        ),
    }


def _run(urls: Mapping[str, str], citizens: int, baseline_url: str, backend: str) -> dict[str, Any]:
    platform = make_engine(urls[PSEUDONYMS])
    upgrade(platform)
    platform.dispose()
    report = seed(citizens, 2026, urls)
    rows = report.total_rows
    baseline_s = _baseline(baseline_url, rows)
    return {
        "backend": backend,
        "citizens": citizens,
        "households": report.households,
        "rows": rows,
        "rows_by_registry": dict(report.rows),
        "seed_seconds": round(report.seconds, 2),
        "seed_rows_per_s": round(rows / report.seconds),
        "baseline_executemany_seconds": round(baseline_s, 2),
        "baseline_rows_per_s": round(rows / baseline_s),
        "seed_over_baseline_time_ratio": round(report.seconds / baseline_s, 2),
        "latency": _latency(urls["resident-registry"]),
    }


def _sqlite(citizens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="oo-bench-adapters-") as tmp:
        root = Path(tmp)
        urls = {name: f"sqlite:///{root / name}.sqlite" for name in REGISTRY_TABLES}
        urls[PSEUDONYMS] = f"sqlite:///{root / 'platform'}.sqlite"
        return _run(urls, citizens, f"sqlite:///{root / 'baseline'}.sqlite", "sqlite")


def _postgres(admin_url: str, citizens: int) -> dict[str, Any]:
    """One throw-away database holding every registry (their table names are distinct)."""
    admin = create_engine(make_url(normalise_url(admin_url)), isolation_level="AUTOCOMMIT")
    name = f"oo_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(normalise_url(admin_url)).set(database=name)
        rendered = url.render_as_string(hide_password=False)
        urls = {**dict.fromkeys(REGISTRY_TABLES, rendered), PSEUDONYMS: rendered}
        return _run(urls, citizens, rendered, "postgresql")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 citizens instead of 100,000")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="a PostgreSQL server to measure too (a throw-away database is created on it)",
    )
    args = parser.parse_args()
    citizens = 10_000 if args.quick else 100_000
    result: dict[str, Any] = {"benchmark": "adapters", "sqlite": _sqlite(citizens)}
    if args.database_url and is_postgres(args.database_url):
        result["postgresql"] = _postgres(args.database_url, citizens)
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
