"""Prometheus metrics of the consent service (docs/operator.md "Metrics").

A ``prometheus_client`` collector: the host (the central server's ``/metrics``) registers it on its
own registry. Counts the nodes' gate questions by operation and answer, and the citizens' and
consumers' actions on consents. No label carries a subject, a consent id or a client: only the
closed sets below.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from prometheus_client import Counter
from prometheus_client.metrics_core import Metric

__all__ = ["ConsentMetrics"]

GateOperation = Literal["check", "use"]
Action = Literal["request", "approve", "decline", "pause", "resume", "revoke"]


class ConsentMetrics:
    def __init__(self) -> None:
        self.gate = Counter(
            "onceonly_consent_gate_total",
            "Provider nodes' consent questions, by operation (check, use) and decision (allow, deny)",
            ["operation", "decision"],
            registry=None,
        )
        self.actions = Counter(
            "onceonly_consent_actions_total",
            "Consent requests made by consumers and citizens' actions on consents",
            ["action"],
            registry=None,
        )

    def gate_answer(self, operation: GateOperation, allow: bool) -> None:
        self.gate.labels(operation, "allow" if allow else "deny").inc()

    def action(self, action: Action) -> None:
        self.actions.labels(action).inc()

    def collect(self) -> Iterator[Metric]:
        yield from self.gate.collect()
        yield from self.actions.collect()
