"""Prometheus metrics of one node (``GET /metrics``), on a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["NodeMetrics"]


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exchanges = Counter(
            "onceonly_exchanges_total",
            "Exchanges handled, by side and outcome",
            ["side", "outcome"],
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
