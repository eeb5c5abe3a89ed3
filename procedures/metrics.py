"""Prometheus metrics of the procedure runner (docs/operator.md "Metrics").

A ``prometheus_client`` collector: the host (the one-stop desk's ``/metrics``) registers it on its
own registry. Counters are kept by the runners of this process; the queue depth is read from the
database at scrape time (one grouped ``COUNT``), because other runners in other processes move the
same steps. If the database cannot be read, the scrape leaves the depth out instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import Engine, case, func, select

from exchange.db import as_unavailable
from procedures.model import StepState
from procedures.store import StepRow

__all__ = ["RunnerMetrics"]


class RunnerMetrics:
    """What the runners of this process did, and how many steps wait in the shared queue."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self.claimed = Counter(
            "onceonly_procedure_steps_claimed_total", "Steps claimed by a runner", registry=None
        )
        self.reclaimed = Counter(
            "onceonly_procedure_lease_reclaims_total",
            "Steps taken over from a runner whose lease ran out (it crashed or stalled)",
            registry=None,
        )
        self.retries = Counter(
            "onceonly_procedure_step_retries_total",
            "Transient failures that put a step back to pending after a backoff",
            registry=None,
        )
        self.completed = Counter(
            "onceonly_procedure_steps_completed_total",
            "Step outcomes recorded, by the state they left the step in",
            ["state"],
            registry=None,
        )
        self.renewals = Counter(
            "onceonly_procedure_lease_renewals_total",
            "Lease heartbeats that extended a running step's lease",
            registry=None,
        )
        self.lost = Counter(
            "onceonly_procedure_leases_lost_total",
            "Heartbeats or completions that found the step taken over by another runner",
            registry=None,
        )
        self.database_unavailable = Counter(
            "onceonly_procedure_runner_database_unavailable_total",
            "Runner rounds or heartbeats that could not use the database (retried later)",
            registry=None,
        )

    def _counters(self) -> tuple[Counter, ...]:
        return (
            self.claimed,
            self.reclaimed,
            self.retries,
            self.completed,
            self.renewals,
            self.lost,
            self.database_unavailable,
        )

    def collect(self) -> Iterator[Metric]:
        for counter in self._counters():
            yield from counter.collect()
        depth = self._queue_depth()
        if depth is not None:
            gauge = GaugeMetricFamily(
                "onceonly_procedure_queue_depth",
                "Steps not final yet: pending (of which due now) and running",
                labels=["state"],
            )
            for state, count in depth.items():
                gauge.add_metric([state], count)
            yield gauge

    def _queue_depth(self) -> dict[str, float] | None:
        if self._engine is None:
            return None
        now = datetime.now(UTC)
        due = case(
            (
                (StepRow.state == StepState.PENDING.value) & (StepRow.next_attempt_at <= now),
                1,
            ),
            else_=0,
        )
        query = (
            select(StepRow.state, func.count(), func.sum(due))
            .where(StepRow.state.in_([StepState.PENDING.value, StepState.RUNNING.value]))
            .group_by(StepRow.state)
        )
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except Exception as exc:
            if as_unavailable(exc) is None:
                raise
            return None
        depth = {"pending": 0.0, "due": 0.0, "running": 0.0}
        for state, count, due_count in rows:
            depth[state] = float(count)
            if state == StepState.PENDING.value:
                depth["due"] = float(due_count or 0)
        return depth
