"""Prometheus metrics of one node (``GET /metrics``), on a registry of its own per app.

On top of what every component exports (``exchange.web.metrics.ComponentMetrics``), a node counts
its exchanges by side, decision and X-Road error code. Label values that come from peers (X-Road error codes) are bounded: anything that does not
look like a code is counted as ``other``, so a peer cannot blow up the series count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from prometheus_client import Counter, Histogram
from prometheus_client.registry import Collector

from exchange.web.metrics import ComponentMetrics

__all__ = ["ComponentMetrics", "NodeMetrics", "decision_of", "metric_code"]

_CODE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*){0,5}")
MAX_CODE_CHARS = 80
Decision = Literal["allow", "deny", "error"]


def metric_code(code: str | None) -> str:
    """An X-Road error code as a label value (``""`` for none, ``other`` for garbage)."""
    if not code:
        return ""
    if len(code) > MAX_CODE_CHARS or not _CODE.fullmatch(code):
        return "other"
    return code


def decision_of(status: int) -> Decision:
    """How an answer counts: 5xx is an error of some part, 4xx a refusal, the rest allowed."""
    if status >= 500:
        return "error"
    return "deny" if status >= 400 else "allow"


class NodeMetrics(ComponentMetrics):
    """A node's metrics: exchanges by side, decision and X-Road error code."""

    def __init__(self, collectors: Sequence[Collector] = ()) -> None:
        super().__init__(collectors)
        self.exchanges = Counter(
            "onceonly_exchanges_total",
            "Exchanges handled, by side, decision (allow, deny, error) and X-Road error code",
            ["side", "decision", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "onceonly_exchange_seconds",
            "Exchange handling time, by side",
            ["side"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.registry_serial = Counter(
            "onceonly_registry_updates_total",
            "Verified central registry updates adopted",
            registry=self.registry,
        )

    def exchange(
        self, side: Literal["provider", "consumer"], status: int, code: str | None
    ) -> None:
        self.exchanges.labels(side, decision_of(status), metric_code(code)).inc()
