"""Prometheus metrics every component exports (``GET /metrics``), on a registry of its own per app.

The process collectors (``process_*``, ``python_*``), ``onceonly_database_unavailable_total`` by
where it was noticed, and the collectors of the parts an app hosts (the consent service's, the
procedure runner's). docs/operator.md "Metrics" lists them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ComponentMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4"
UnavailableWhere = Literal["request", "readiness", "background"]


class ComponentMetrics:
    """The registry of one app: process metrics, database unavailability, extra collectors."""

    def __init__(self, collectors: Sequence[Collector] = ()) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.database_unavailable = Counter(
            "onceonly_database_unavailable_total",
            "Times the database could not be used: answered 503 (request), failed a readiness "
            "check (readiness) or skipped background work (background)",
            ["where"],
            registry=self.registry,
        )
        for collector in collectors:
            self.registry.register(collector)

    def database_unavailable_at(self, where: UnavailableWhere) -> None:
        self.database_unavailable.labels(where).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
