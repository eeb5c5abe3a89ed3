"""Portal page latency in-process (ASGI, no network): the main pages against a static file.

Usage::

    .venv/bin/python benchmarks/portal.py            # 10^4 log entries, 300 requests per page
    .venv/bin/python benchmarks/portal.py --quick    # 10^3 entries, 100 requests per page

A SQLite world is built in a temporary directory (``tests/portal/portal_world.py``: consents,
two transparency logs, checkpoints) and the citizen's log is padded with exchanges. Measured in one
run, one client, through ``httpx.ASGITransport`` (template rendering, session and CSRF handling,
database reads and proof verification, no TCP):

* ``static_css`` — the baseline: ``GET /static/portal.css`` through the same middleware;
* ``consents`` — ``GET /consents`` (ConsentService list + requests);
* ``access`` — ``GET /access`` (timeline over every log, 200 entries per log);
* ``verify`` — ``POST /access/verify`` (inclusion proof against the signed checkpoint);
* ``auditor_entry`` — ``GET /auditor/entry`` as the auditor (proof + checkpoint).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from tests.consent.consent_factories import ALICE  # noqa: E402
from tests.portal.portal_client import PortalClient  # noqa: E402
from tests.portal.portal_world import NODE, build_world, exchange_event  # noqa: E402


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median_ms": round(statistics.median(ordered) * 1e3, 3), "p99_ms": round(p99 * 1e3, 3)}


async def _measure(n: int, call: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    for _ in range(min(10, n)):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = await call()
        samples.append(time.perf_counter() - t0)
        if response.status_code != 200:
            raise SystemExit(f"unexpected status {response.status_code}")
    return _stats(samples)


async def _run(entries: int, requests: int, tmp: Path) -> dict[str, Any]:
    world = build_world(f"sqlite:///{tmp}/c.sqlite", f"sqlite:///{tmp}/l.sqlite", tmp)
    base = world.now - timedelta(days=20)
    world.log.append_many(
        exchange_event(base + timedelta(seconds=i), "ps-alice" if i % 10 == 0 else f"ps-{i}")
        for i in range(entries)
    )
    world.log.sign_checkpoint(world.now)
    index = world.log.size() - 10  # a ps-alice entry near the end
    while world.log.entry(index).record.get("subject") != "ps-alice":
        index -= 1
    results: dict[str, Any] = {}
    async with PortalClient(world) as citizen, PortalClient(world) as auditor:
        await citizen.sign_in(ALICE)
        await auditor.sign_in("auditor")
        results["static_css"] = await _measure(requests, lambda: citizen.get("/static/portal.css"))
        results["consents"] = await _measure(requests, lambda: citizen.get("/consents"))
        results["access"] = await _measure(requests, lambda: citizen.get("/access"))
        results["verify"] = await _measure(
            requests,
            lambda: citizen.post("/access/verify", {"node": NODE, "index": str(index)}),
        )
        results["auditor_entry"] = await _measure(
            requests,
            lambda: auditor.get("/auditor/entry", params={"node": NODE, "index": str(index)}),
        )
    baseline = results["static_css"]["median_ms"]
    for name in ("consents", "access", "verify", "auditor_entry"):
        results[name]["ratio_to_static"] = round(results[name]["median_ms"] / baseline, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    entries, requests = (1_000, 100) if args.quick else (10_000, 300)
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(_run(entries, requests, Path(tmp)))
    for name, value in results.items():
        print(f"{name:>14}: {value}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "portal",
                "database": "sqlite",
                "log_entries": entries,
                "requests_per_page": requests,
                "baseline": "static_css",
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
