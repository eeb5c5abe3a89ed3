"""Benchmark of the one-stop address change with every node on this machine (issue 7).

Measures, in one run:

- **one procedure at a time**: the wall time from confirmation to the signed summary, against the
  sum of its steps' exchange times (each a signed exchange through the one-stop node): the ratio
  shows what running the notifications in parallel after the resident record saves;
- the start + preview time (planning reads through the node, consent requests);
- **throughput**: address changes per minute, end to end (start, preview, confirm, run), with
  several citizens at once and two runners sharing the steps.

Prints one JSON object on its last line. Not a test. ``--quick`` for a short run; SQLite unless
``DATABASE_URL`` points at PostgreSQL. The federation is the one the procedures tests use
(central + one uvicorn server per member on loopback, real HTTP between nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select
from sqlalchemy.orm import Session

from procedures.model import AddressChangeInput, ConfirmInput
from procedures.store import StepRow
from tests.procedures.helpers import Federation, start_federation

ADDRESS = "東京都町田市中町一丁目20番23号"
CONCURRENCY = 8
RUNNERS = 2


def _now() -> datetime:
    return datetime.now(UTC)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _start_and_confirm(fed: Federation, service: Any, citizen: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    view = await service.start(
        citizen, AddressChangeInput(move_date=_now().date(), address=ADDRESS), now=_now()
    )
    preview_s = time.perf_counter() - t0
    decisions: dict[str, Literal["approve", "decline"]] = {
        r.recipient: "approve" for r in view.recipients if r.consent_request_id
    }
    await asyncio.to_thread(
        service.confirm, citizen, view.id, ConfirmInput(consents=decisions), now=_now()
    )
    return view.id, preview_s


async def _until_final(
    fed: Federation, runners: list[Any], service: Any, ids: list[tuple[str, str]]
) -> None:
    pending = set(ids)
    while pending:
        await asyncio.gather(*(r.run_once() for r in runners))
        for citizen, pid in list(pending):
            if service.get(pid, subject=citizen).certificate_available:
                pending.discard((citizen, pid))


def _exchange_sum(fed: Federation, pid: str) -> tuple[float, int]:
    with Session(fed.procedures_engine) as s:
        times = [
            t
            for t in s.scalars(select(StepRow.exchange_s).where(StepRow.procedure_id == pid))
            if t is not None
        ]
    return sum(times), len(times)


async def _bench(fed: Federation, single: int, batch: int) -> dict[str, Any]:
    # Household heads: they hold the water (and often electricity, gas) contracts too.
    citizens = fed.citizens_in(["resident-registry", "water"])
    if len(citizens) < single + batch:
        raise SystemExit(f"not enough citizens: {len(citizens)} < {single + batch}")
    async with fed.client() as client:
        service = fed.service(client)
        runner = fed.runner(client)
        # Warm-up (connections, registry caches).
        pid, _ = await _start_and_confirm(fed, service, citizens[0])
        await _until_final(fed, [runner], service, [(citizens[0], pid)])
        run_s, sums, ratios, previews, steps = [], [], [], [], []
        for citizen in citizens[1 : 1 + single]:
            pid, preview_s = await _start_and_confirm(fed, service, citizen)
            t0 = time.perf_counter()
            await _until_final(fed, [runner], service, [(citizen, pid)])
            elapsed = time.perf_counter() - t0
            total, n = _exchange_sum(fed, pid)
            run_s.append(elapsed)
            sums.append(total)
            ratios.append(elapsed / total if total else float("nan"))
            previews.append(preview_s)
            steps.append(n)
        group = citizens[1 + single : 1 + single + batch]
        runners = [fed.runner(client, runner_id=f"bench-{i}") for i in range(RUNNERS)]
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(c: str) -> tuple[str, str]:
            async with sem:
                p, _ = await _start_and_confirm(fed, service, c)
                return c, p

        t0 = time.perf_counter()
        ids = await asyncio.gather(*(one(c) for c in group))
        await _until_final(fed, runners, service, list(ids))
        batch_s = time.perf_counter() - t0
    return {
        "procedure_run_s_median": round(statistics.median(run_s), 4),
        "procedure_run_s_p99": round(_pct(run_s, 0.99), 4),
        "sum_of_step_exchanges_s_median": round(statistics.median(sums), 4),
        "ratio_procedure_vs_sum_of_steps_median": round(statistics.median(ratios), 3),
        "steps_exchanged_per_procedure_median": statistics.median(steps),
        "start_preview_s_median": round(statistics.median(previews), 4),
        "start_preview_s_p99": round(_pct(previews, 0.99), 4),
        "throughput_procedures": len(group),
        "throughput_wall_s": round(batch_s, 3),
        "address_changes_per_minute": round(len(group) / batch_s * 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    single, batch, citizens = (8, 16, 80) if args.quick else (30, 60, 250)
    base = os.environ.get("DATABASE_URL")
    with tempfile.TemporaryDirectory() as tmp:
        db_url = base if base else f"sqlite:///{tmp}/procedures-{uuid.uuid4().hex[:6]}.sqlite"
        if base:
            from tests.conftest import _create_pg_database  # a throw-away database

            db_url, drop = _create_pg_database(base)
        else:
            drop = None
        fed = start_federation(Path(tmp), db_url, citizens=citizens)
        try:
            result = asyncio.run(_bench(fed, single, batch))
        finally:
            fed.close()
            if drop is not None:
                drop()
    result = {
        "benchmark": "procedure",
        "database": "postgresql" if base else "sqlite",
        "quick": args.quick,
        "runners": RUNNERS,
        "concurrency": CONCURRENCY,
        **result,
    }
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
