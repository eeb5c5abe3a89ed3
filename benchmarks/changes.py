"""What publishing a change costs, and how fast subscribers hear of it (issue 17 item 3).

Real processes on 127.0.0.1: the central server, Machida's node (the resident registry, which
publishes ``address-changed/v1``; the tax division, a subscriber by statute) and Tama Gas's node
(a subscriber on the citizen's standing consent), provisioned like the integration tests.

(a) change exchanges, closed loop (``--concurrency`` clients for ``--seconds``): the one-stop desk
    records moves straight at ``address-change/v1`` (a fresh ``Idempotency-Key`` each) for a
    citizen **with two subscribers** (tax and gas: one event each, in the change's answer path)
    and for a citizen **with none** (the same exchange, nothing to publish). The two alternate
    (``--repeat`` rounds); each figure is the median over the rounds; the ratio is with / without.
(b) delivery of the events of (a): lag is the subscriber's ``received_at`` (its change feed) minus
    the event's ``created_at`` in the publisher's outbox (one machine, one clock); throughput is
    events applied per second from the first event created to the last applied.

    .venv/bin/python benchmarks/changes.py [--quick] [--seconds 6] [--repeat 2] [--concurrency 8]

With ``DATABASE_URL=postgresql://…`` everything runs on a throw-away PostgreSQL database created
from it (dropped at the end). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = _HERE.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from sqlalchemy import select, text  # noqa: E402

from adapters.pseudonyms import PseudonymService  # noqa: E402
from benchmarks._loop import closed_loop, summary  # noqa: E402
from exchange.db import as_utc, make_engine  # noqa: E402
from exchange.errors import OnceOnlyError  # noqa: E402
from exchange.node.app import database_url  # noqa: E402
from exchange.ports import CITIZEN_AGENCY  # noqa: E402
from exchange.store import ChangeFeedRow, NodeEventOutboxRow  # noqa: E402
from onceonly.wiring import PSEUDONYMS, registry_database_url  # noqa: E402
from tests.conftest import _create_pg_database  # noqa: E402
from tests.integration.processes import provisioned_cluster, running  # noqa: E402
from tests.integration.test_change_subscriptions_processes import (  # noqa: E402
    CHANGE,
    EVENT,
    ONE_STOP,
    _gas_consent,
)
from tests.integration.test_consent_push_processes import (  # noqa: E402
    GAS,
    GAS_CLIENT,
    MACHIDA,
    TAX,
)


def _citizens(settings: Any, n: int) -> list[dict[str, str]]:
    """``n`` taxpayers who are gas customers: their codes at the desk (citizen), tax and gas."""
    tax_db = make_engine(registry_database_url(settings, "municipal-tax"))
    with tax_db.connect() as conn:
        taxpayers = conn.execute(
            text("SELECT taxpayer_id FROM taxpayers ORDER BY taxpayer_id")
        ).scalars()
        codes = [str(t) for t in taxpayers]
    tax_db.dispose()
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        svc = PseudonymService(store, (TAX, GAS_CLIENT, CITIZEN_AGENCY))
        out = []
        for tax_code in codes:
            try:
                gas_code = svc.translate(tax_code, TAX, GAS_CLIENT)
            except OnceOnlyError:  # not a gas customer: the next one
                continue
            citizen = svc.translate(tax_code, TAX, CITIZEN_AGENCY)
            out.append({"gas": gas_code, "tax": tax_code, "citizen": citizen})
            if len(out) == n:
                break
        return out
    finally:
        store.dispose()


async def _changes(
    url: str, headers: dict[str, str], *, concurrency: int, seconds: float, warmup: float
) -> dict[str, float]:
    """Moves recorded at ``url``, each with a fresh idempotency key and address."""
    counter = itertools.count()

    async def send(session: aiohttp.ClientSession) -> bool:
        n = next(counter)
        body = {"address": f"東京都町田市森野{n % 9 + 1}丁目{n}番", "moved_in_on": "2026-12-01"}
        h = {**headers, "Idempotency-Key": f"bench-{uuid.uuid4()}"}
        async with session.post(url, json=body, headers=h) as r:
            await r.read()
            return r.status == 200

    run = await closed_loop(send, concurrency=concurrency, seconds=seconds, warmup=warmup)
    return summary(run)


def _subscribe(c: Any, settings: Any, keys: dict[str, str], who: dict[str, str]) -> None:
    machida, gas = c.procs[str(MACHIDA)], c.procs[str(GAS)]
    tax = {
        "X-Road-Client": TAX,
        "X-OnceOnly-Api-Key": keys[TAX],
        "X-OnceOnly-Purpose": "taxation",
        "X-OnceOnly-Subject": who["tax"],
    }
    assert httpx.post(f"{machida.url}/r1/{EVENT}", headers=tax, timeout=30).status_code == 201
    consent = _gas_consent(c, settings, keys[GAS_CLIENT], who["gas"], who["citizen"])
    gas_h = {
        "X-Road-Client": GAS_CLIENT,
        "X-OnceOnly-Api-Key": keys[GAS_CLIENT],
        "X-OnceOnly-Purpose": "address-change",
        "X-OnceOnly-Subject": who["gas"],
        "X-OnceOnly-Fields": "address",
        **consent,
    }
    assert httpx.post(f"{gas.url}/r1/{EVENT}", headers=gas_h, timeout=30).status_code == 201


def _delivery(settings: Any, started: datetime) -> dict[str, Any]:
    """Lag and throughput of the change events created since ``started``."""
    machida_db = make_engine(database_url(settings, f"node-{str(MACHIDA).replace('/', '_')}"))
    gas_db = make_engine(database_url(settings, f"node-{str(GAS).replace('/', '_')}"))
    try:
        with machida_db.connect() as conn:
            sent = {
                r.event_id: as_utc(r.created_at)
                for r in conn.execute(
                    select(NodeEventOutboxRow.event_id, NodeEventOutboxRow.created_at)
                )
                if as_utc(r.created_at) >= started
            }
        received: dict[str, datetime] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(received) < len(sent):
            for eng in (machida_db, gas_db):
                with eng.connect() as conn:
                    for r in conn.execute(
                        select(ChangeFeedRow.event_id, ChangeFeedRow.received_at)
                    ):
                        if r.event_id in sent:
                            received[r.event_id] = as_utc(r.received_at)
            time.sleep(0.25)
    finally:
        machida_db.dispose()
        gas_db.dispose()
    lags = sorted((received[e] - sent[e]).total_seconds() for e in received)
    first = min(sent.values()) if sent else started
    last = max(received.values()) if received else first
    pick = (
        (lambda q: round(1000 * lags[min(len(lags) - 1, int(len(lags) * q))], 1)) if lags else None
    )
    return {
        "events_sent": len(sent),
        "events_applied": len(received),
        "throughput_events_per_s": round(
            len(received) / max((last - first).total_seconds(), 1e-9), 1
        ),
        "lag_p50_ms": pick(0.5) if pick else None,
        "lag_p99_ms": pick(0.99) if pick else None,
        "lag_max_ms": round(1000 * lags[-1], 1) if lags else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat = 2.0, 1

    tmp = Path(tempfile.mkdtemp(prefix="onceonly-bench-changes-"))
    pg_url, drop = None, None
    if os.environ.get("DATABASE_URL"):
        pg_url, drop = _create_pg_database(os.environ["DATABASE_URL"])
    cluster, settings, api_keys = provisioned_cluster(
        tmp / "data",
        (MACHIDA, GAS),
        log=tmp / "processes.log",
        database_url=pg_url,
        citizens=20,
        env={"ONCEONLY_REGISTRY_REFRESH_S": "5", "ONCEONLY_EVENT_RETRY_MAX_S": "1"},
    )
    gen = running(cluster)
    c = next(gen)
    result: dict[str, Any] = {
        "benchmark": "changes",
        "database": "postgresql" if pg_url else "sqlite",
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "repeat": args.repeat,
    }
    try:
        for p in c.procs.values():
            p.start()
        subscribed, alone = _citizens(settings, 2)
        _subscribe(c, settings, api_keys, subscribed)
        url = f"{c.procs[str(MACHIDA)].url}/r1/{CHANGE}"

        def headers(who: dict[str, str]) -> dict[str, str]:
            return {
                "X-Road-Client": ONE_STOP,
                "X-OnceOnly-Api-Key": api_keys[ONE_STOP],
                "X-OnceOnly-Purpose": "address-change",
                "X-OnceOnly-Subject": who["citizen"],
            }

        started = datetime.now(UTC)
        runs: dict[str, list[dict[str, float]]] = {"two_subscribers": [], "none": []}
        for _ in range(args.repeat):
            for mode, who in (("none", alone), ("two_subscribers", subscribed)):
                runs[mode].append(
                    asyncio.run(
                        _changes(
                            url,
                            headers(who),
                            concurrency=args.concurrency,
                            seconds=args.seconds,
                            warmup=1.0,
                        )
                    )
                )
        for mode, measured in runs.items():
            result[mode] = {
                k: round(statistics.median(m[k] for m in measured), 2)
                for k in ("throughput_per_s", "p50_ms", "p99_ms", "errors")
            }
        result["ratio_published_to_unpublished"] = round(
            result["two_subscribers"]["throughput_per_s"]
            / max(result["none"]["throughput_per_s"], 1e-9),
            3,
        )
        result["delivery"] = _delivery(settings, started)
    finally:
        gen.close()
        if drop is not None:
            drop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
