"""A provider node's cache of consent checks, invalidated by the consent status push.

Without it a consented exchange costs the provider two calls to the consent service: ``check``
(does the consent cover this request? no side effect) before the policy, and ``use`` (record the
use, spend a one-time consent, apply limits) after it. ``CachingConsentGate`` answers ``check``
from a cache and always passes ``use`` through to the service.

Staleness bound (docs/consent.md "Status push and the provider's cache"): an entry is dropped
when a status event for its consent arrives (``on_event``), when ``use`` is refused, and in any
case ``ttl_s`` seconds after it was fetched. So a cached answer is at most ``ttl_s`` old even if
every push is lost. A cached *allow* can never release data on a consent revoked meanwhile: the
``use`` that must follow it asks the service, whose status wins; a cached *refusal* (a paused
consent) can outlive a resume by at most ``ttl_s`` if the push is lost.

The key holds everything the answer depends on (consent id, artefact, citizen, client, service,
purpose, fields), so an answer is only reused for the same question.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from exchange.events import EventEnvelope
from exchange.ports import ConsentDecision, ConsentGate, ConsentQuery

__all__ = ["DEFAULT_MAX_ENTRIES", "CachingConsentGate"]

DEFAULT_MAX_ENTRIES = 100_000


def _key(query: ConsentQuery) -> tuple[str, str]:
    digest = hashlib.sha256(
        "\x00".join(
            [
                query.artefact or "",
                query.subject or "",
                str(query.client),
                str(query.service),
                query.purpose,
                "\x01".join(query.fields),
            ]
        ).encode()
    ).hexdigest()
    return query.consent_id, digest


class CachingConsentGate:
    """``ConsentGate`` answering ``check`` from a TTL cache; ``use`` always asks ``inner``."""

    def __init__(
        self,
        inner: ConsentGate,
        *,
        ttl_s: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self.ttl_s = ttl_s
        self._max = max_entries
        self._now = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[float, ConsentDecision]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self._service: Any = None

    def check(self, query: ConsentQuery) -> ConsentDecision:
        key = _key(query)
        now = self._now()
        with self._lock:
            found = self._entries.get(key)
            if found is not None and now < found[0]:
                self.hits += 1
                return found[1]
            self.misses += 1
        decision = self._inner.check(query)
        if self.ttl_s > 0:
            with self._lock:
                self._entries[key] = (now + self.ttl_s, decision)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return decision

    def use(self, query: ConsentQuery) -> ConsentDecision:
        decision = self._inner.use(query)
        if not decision:
            self.invalidate(query.consent_id)  # the service knows better than our entry
        return decision

    def invalidate(self, consent_id: str) -> int:
        with self._lock:
            stale = [k for k in self._entries if k[0] == consent_id]
            for k in stale:
                del self._entries[k]
            self.invalidations += len(stale)
            return len(stale)

    def on_event(self, _session: Any, event: EventEnvelope) -> None:
        """An inbox handler: a status event drops every entry of its consent."""
        consent_id = event.data.get("consent_id")
        if isinstance(consent_id, str):
            self.invalidate(consent_id)

    def on_registry(self, registry: Any) -> None:
        """A registry naming another consent service (or key): start afresh."""
        entry = getattr(getattr(registry, "document", None), "consent_service", None)
        with self._lock:
            if entry != self._service:
                self._service = entry
                self._entries.clear()

    def collect(self) -> Iterator[Metric]:
        """Prometheus: ``onceonly_consent_cache_total{outcome=hit|miss|invalidated}`` and the
        entries held (registered on the node's ``/metrics``)."""
        counts = CounterMetricFamily(
            "onceonly_consent_cache",
            "Consent checks answered from the provider's cache (hit) or asked (miss), and entries "
            "dropped by a status push or a refused use (invalidated)",
            labels=["outcome"],
        )
        with self._lock:
            counts.add_metric(["hit"], self.hits)
            counts.add_metric(["miss"], self.misses)
            counts.add_metric(["invalidated"], self.invalidations)
            size = len(self._entries)
        yield counts
        yield GaugeMetricFamily(
            "onceonly_consent_cache_entries", "Consent checks held in the cache", value=size
        )

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if callable(close):
            close()
