"""Soak: a signed exchange at half of its measured maximum for ≥ 10 minutes, watching resources.

Starts the central server and two nodes (``benchmarks/_federation.py``; PostgreSQL when
``DATABASE_URL`` is set), measures the maximum closed-loop throughput for ``--probe-seconds``,
then sends exchanges open-loop at half of it for ``--minutes`` and samples every
``--sample-seconds`` each server process's open file descriptors (``/proc/<pid>/fd``) and RSS,
with the window's throughput, errors and latency. Verdict ``fds_flat``: in the second half of
the run no process's descriptor count exceeds its maximum of the first half by more than
``FD_SLACK`` (pools that fill up to their bounds early are flat; a leak keeps growing). One JSON
object on the last line.

    python benchmarks/soak.py [--minutes 10] [--probe-seconds 10] [--sample-seconds 15]
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
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _federation import TwoNodes, start_two_nodes

FD_SLACK = 8
MAX_IN_FLIGHT = 512
CLIENT_CONNECTIONS = 64
"""The load generator's connection pool: bounded, so the nodes' inbound sockets are too, and a
growing descriptor count is the node's own (an unbounded client opens a socket per request that
waits, which a node then holds: that, not a leak, was the growth an earlier soak saw)."""


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_kinds(pid: int) -> dict[str, int]:
    """What a process's descriptors are: sockets, pipes, anonymous inodes, files."""
    kinds: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return -1.0


async def probe(nodes: TwoNodes, seconds: float, concurrency: int = 32) -> float:
    """Closed-loop maximum: requests per second answered 200 by ``concurrency`` callers."""
    done = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                async with session.get(nodes.url, headers=nodes.headers) as r:
                    await r.read()
                    done += r.status == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


async def soak(
    nodes: TwoNodes, rate: float, minutes: float, sample_s: float
) -> list[dict[str, Any]]:
    pids = {p.name: p.popen.pid for p in nodes.procs if p.popen is not None}
    samples: list[dict[str, Any]] = []
    window: dict[str, Any] = {"ok": 0, "errors": 0, "latencies": []}
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()

    connector = aiohttp.TCPConnector(limit=CLIENT_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            t0 = time.perf_counter()
            try:
                async with session.get(nodes.url, headers=nodes.headers) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            finally:
                in_flight.release()
            if ok:
                window["ok"] += 1
                window["latencies"].append(time.perf_counter() - t0)
            else:
                window["errors"] += 1

        start = time.perf_counter()
        end = start + minutes * 60
        next_sample = start + sample_s
        sent = 0
        while (now := time.perf_counter()) < end:
            due = int((now - start) * rate) - sent
            for _ in range(max(due, 0)):
                await in_flight.acquire()
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if now >= next_sample:
                lat = sorted(window["latencies"])
                samples.append(
                    {
                        "t_s": round(now - start),
                        "rps": round(window["ok"] / sample_s, 1),
                        "errors": window["errors"],
                        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1) if lat else None,
                        "fds": {n: fds(p) for n, p in pids.items()},
                        "rss_mb": {n: rss_mb(p) for n, p in pids.items()},
                        "fd_kinds": {n: fd_kinds(p) for n, p in pids.items()},
                    }
                )
                window = {"ok": 0, "errors": 0, "latencies": []}
                next_sample += sample_s
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks, return_exceptions=True)
    return samples


def verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(samples[0]["fds"]) if samples else []
    warm = samples[: max(1, len(samples) // 2)]
    rest = samples[len(warm) :]
    growth = {
        n: max((s["fds"][n] for s in rest), default=0) - max(s["fds"][n] for s in warm)
        for n in names
    }
    return {
        "fds_first": samples[0]["fds"] if samples else {},
        "fds_last": samples[-1]["fds"] if samples else {},
        "fd_kinds_last": samples[-1]["fd_kinds"] if samples else {},
        "fds_max": {n: max(s["fds"][n] for s in samples) for n in names},
        "fds_growth_after_warmup": growth,
        "rss_mb_first": samples[0]["rss_mb"] if samples else {},
        "rss_mb_last": samples[-1]["rss_mb"] if samples else {},
        "errors": sum(s["errors"] for s in samples),
        "fds_flat": all(g <= FD_SLACK for g in growth.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--probe-seconds", type=float, default=10.0)
    ap.add_argument("--sample-seconds", type=float, default=15.0)
    args = ap.parse_args()
    nodes = start_two_nodes(Path(tempfile.mkdtemp(prefix="oo-soak-")))
    try:
        maximum = asyncio.run(probe(nodes, args.probe_seconds))
        rate = maximum / 2
        samples = asyncio.run(soak(nodes, rate, args.minutes, args.sample_seconds))
    finally:
        nodes.stop()
    for s in samples:
        print(json.dumps(s), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "soak",
                "database": "postgresql" if os.environ.get("DATABASE_URL") else "sqlite",
                "minutes": args.minutes,
                "max_rps": round(maximum, 1),
                "target_rps": round(rate, 1),
                "client_connections": CLIENT_CONNECTIONS,
                "mean_rps": round(statistics.mean(s["rps"] for s in samples), 1) if samples else 0,
                "samples": len(samples),
                **verdict(samples),
            }
        )
    )


if __name__ == "__main__":
    main()
