"""What the consent status push saves, and what event delivery costs (issue 17).

Real processes on 127.0.0.1: the central server (consent service), Machida's node (provider of the
resident registry) and Tama Gas's node (consumer), provisioned like the integration tests; the
citizen grants Gas a standing consent to read their address.

(a) consented exchanges, closed loop (``--concurrency`` clients for ``--seconds``), through Gas's
    node to Machida's, with Machida's node **asking the consent service on every request**
    (``ONCEONLY_CONSENT_CACHE_TTL_S=0``: ``check`` and ``use``, two calls) and with its
    **push-invalidated cache** (TTL 30 s: ``use`` only once the check is cached). The provider is
    restarted between the two and they alternate (``--repeat`` rounds) so that drift of a shared
    machine hits both alike; each figure is the median over the rounds, the ratio is cached /
    asking.
(b) event delivery: ``--changes`` consent changes (pause, resume, …) made by citizens over the
    consent API, ``--writers`` at a time on as many consents; each change is one event to each of
    the two nodes. Lag is the receiving node's ``received_at`` minus the event's ``created_at``
    (same machine, same clock); throughput is events applied per second from the first event
    created to the last one applied.

    .venv/bin/python benchmarks/events.py [--quick] [--seconds 8] [--repeat 2] [--concurrency 16]

With ``DATABASE_URL=postgresql://…`` everything runs on a throw-away PostgreSQL database created
from it (dropped at the end). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Named like nothing it imports, but keep this directory off the import path all the same.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = _HERE.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import select  # noqa: E402

from benchmarks._loop import closed_loop, getter, summary  # noqa: E402
from consent.store import ConsentEventOutboxRow  # noqa: E402
from exchange.db import as_utc, make_engine  # noqa: E402
from exchange.node.app import database_url  # noqa: E402
from exchange.store import EventInboxRow  # noqa: E402
from tests.conftest import _create_pg_database  # noqa: E402
from tests.integration.processes import provisioned_cluster, running  # noqa: E402
from tests.integration.test_consent_push_processes import (  # noqa: E402
    ADDRESS,
    GAS,
    GAS_CLIENT,
    MACHIDA,
    _citizen,
    _codes,
    _standing_consent,
)


async def _load(
    url: str, headers: dict[str, str], *, concurrency: int, seconds: float, warmup: float
) -> dict[str, float]:
    run = await closed_loop(
        getter(url, headers), concurrency=concurrency, seconds=seconds, warmup=warmup
    )
    return summary(run)


def _cache_counts(url: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("onceonly_consent_cache_total{"):
            found[line.split('outcome="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat, args.changes = 3.0, 1, 40

    tmp = Path(tempfile.mkdtemp(prefix="onceonly-bench-events-"))
    pg_url, drop = None, None
    if os.environ.get("DATABASE_URL"):
        pg_url, drop = _create_pg_database(os.environ["DATABASE_URL"])
    cluster, settings, api_keys = provisioned_cluster(
        tmp / "data",
        (MACHIDA, GAS),
        log=tmp / "processes.log",
        database_url=pg_url,
        citizens=20,
        env={"ONCEONLY_REGISTRY_REFRESH_S": "5", "ONCEONLY_EVENT_PULL_INTERVAL_S": "30"},
    )
    gen = running(cluster)
    c = next(gen)
    result: dict[str, Any] = {
        "benchmark": "events",
        "database": "postgresql" if pg_url else "sqlite",
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "repeat": args.repeat,
    }
    try:
        for p in c.procs.values():
            p.start()
        key = api_keys[GAS_CLIENT]
        gas_code, citizen = _codes(settings)
        consent = _standing_consent(c, settings, key, gas_code, citizen)
        headers = {
            "X-Road-Client": GAS_CLIENT,
            "X-OnceOnly-Api-Key": key,
            "X-OnceOnly-Purpose": "address-change",
            "X-OnceOnly-Subject": gas_code,
            "X-OnceOnly-Fields": "address",
            **consent,
        }
        url = f"{c.procs[str(GAS)].url}/r1/{ADDRESS}"
        machida = c.procs[str(MACHIDA)]

        # (a) asking every time vs the push-invalidated cache, alternating.
        runs: dict[str, list[dict[str, float]]] = {"asking": [], "cached": []}
        hits: dict[str, float] = {}
        for _ in range(args.repeat):
            for mode, ttl in (("asking", "0"), ("cached", "30")):
                machida.stop()
                machida.env = {**machida.env, "ONCEONLY_CONSENT_CACHE_TTL_S": ttl}
                machida.start()
                runs[mode].append(
                    asyncio.run(
                        _load(
                            url,
                            headers,
                            concurrency=args.concurrency,
                            seconds=args.seconds,
                            warmup=1.0,
                        )
                    )
                )
                if mode == "cached":
                    hits = _cache_counts(machida.url)
        for mode, measured in runs.items():
            result[mode] = {
                k: statistics.median(m[k] for m in measured)
                for k in ("throughput_per_s", "p50_ms", "p99_ms", "errors")
            }
            result[mode]["rounds"] = [round(m["throughput_per_s"], 1) for m in measured]
        result["cache_counts_last_round"] = hits
        result["ratio_cached_to_asking"] = round(
            result["cached"]["throughput_per_s"] / max(result["asking"]["throughput_per_s"], 1e-9),
            3,
        )

        # (b) event delivery: citizens change their consents, writers at a time.
        consents = [consent["X-OnceOnly-Consent-Id"]] + [
            _standing_consent(c, settings, key, gas_code, citizen)["X-OnceOnly-Consent-Id"]
            for _ in range(args.writers - 1)
        ]
        who = _citizen(settings, citizen)
        central = c.procs["central"].url
        per_writer = args.changes // args.writers
        failures: list[int] = []
        started = datetime.now(UTC)

        def write(consent_id: str) -> None:
            with httpx.Client(timeout=20) as http:
                for i in range(per_writer):
                    verb = "pause" if i % 2 == 0 else "resume"
                    r = http.post(f"{central}/consent/v1/consents/{consent_id}/{verb}", headers=who)
                    if r.status_code != 200:
                        failures.append(r.status_code)

        threads = [threading.Thread(target=write, args=(cid,)) for cid in consents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        consent_db = make_engine(database_url(settings, "consent"))
        with consent_db.connect() as conn:
            sent = {
                r.event_id: as_utc(r.created_at)
                for r in conn.execute(
                    select(ConsentEventOutboxRow.event_id, ConsentEventOutboxRow.created_at)
                )
                if as_utc(r.created_at) >= started
            }
        consent_db.dispose()
        received: dict[str, datetime] = {}
        deadline = time.monotonic() + 120
        node_dbs = [
            make_engine(database_url(settings, f"node-{str(m).replace('/', '_')}"))
            for m in (MACHIDA, GAS)
        ]
        while time.monotonic() < deadline:
            received = {}
            for eng in node_dbs:
                with eng.connect() as conn:
                    for r in conn.execute(
                        select(EventInboxRow.event_id, EventInboxRow.received_at)
                    ):
                        if r.event_id in sent:
                            received[r.event_id] = as_utc(r.received_at)
            if len(received) >= len(sent):
                break
            time.sleep(0.25)
        for eng in node_dbs:
            eng.dispose()
        lags = sorted((received[e] - sent[e]).total_seconds() for e in received)
        first = min(sent.values())
        last = max(received.values()) if received else first
        result["delivery"] = {
            "changes": per_writer * len(consents),
            "change_failures": len(failures),
            "events_sent": len(sent),
            "events_applied": len(received),
            "throughput_events_per_s": round(
                len(received) / max((last - first).total_seconds(), 1e-9), 1
            ),
            "lag_p50_ms": round(1000 * lags[len(lags) // 2], 1) if lags else None,
            "lag_p99_ms": round(1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))], 1)
            if lags
            else None,
            "lag_max_ms": round(1000 * lags[-1], 1) if lags else None,
        }
    finally:
        gen.close()
        if drop is not None:
            drop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
