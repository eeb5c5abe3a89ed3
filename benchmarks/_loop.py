"""The closed-loop load generator the HTTP benchmarks share (benchmarks only).

``concurrency`` clients each send a request, wait for its answer, and send the next, for
``warmup + seconds``; only requests started after the warm-up are measured. One aiohttp session,
no connection limit. ``send`` makes one request and says whether it succeeded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

Send = Callable[[aiohttp.ClientSession], Awaitable[bool]]


@dataclass
class Loop:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, sorted, successes only
    errors: int = 0
    sent: int = 0  # warm-up included: what the servers' CPU time is divided by

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q < 1) of the measured latencies, in milliseconds."""
        if not self.latencies:
            return None
        return 1000 * self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * q))]


async def closed_loop(send: Send, *, concurrency: int, seconds: float, warmup: float) -> Loop:
    loop = Loop(seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stop_at = time.perf_counter() + warmup + seconds
        measure_from = time.perf_counter() + warmup

        async def client() -> None:
            while (start := time.perf_counter()) < stop_at:
                loop.sent += 1
                ok = await send(session)
                end = time.perf_counter()
                if start >= measure_from:
                    if ok:
                        loop.latencies.append(end - start)
                    else:
                        loop.errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    loop.latencies.sort()
    return loop


def getter(url: str, headers: dict[str, str]) -> Send:
    """``send`` for a GET of ``url`` that succeeds with a 200."""

    async def send(session: aiohttp.ClientSession) -> bool:
        async with session.get(url, headers=headers) as r:
            await r.read()
            return r.status == 200

    return send


def summary(run: Loop) -> dict[str, float]:
    """Throughput (per second), p50 and p99 (ms, 0 without a success) and errors of a run."""
    return {
        "throughput_per_s": run.throughput,
        "p50_ms": run.percentile_ms(0.5) or 0.0,
        "p99_ms": run.percentile_ms(0.99) or 0.0,
        "errors": run.errors,
    }
