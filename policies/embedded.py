"""The embedded policy engine (the default): the shipped Rego, evaluated in-process by rego-cpp.

Concept: ``EmbeddedRegoEngine`` implements ``exchange.ports.PolicyDecider``. It compiles the policy
modules with the current policy data into one bundle for the decision query
(``x := data.onceonly.exchange.decision``); ``load_data`` compiles a new bundle off to the side
and swaps it in with one reference assignment, so a registry change takes effect without a restart
and no decision ever sees half of one data document.

Allow decisions are cached exactly: the policy reads ``input.now`` only against the validity
windows in the data, so a decision is constant between two consecutive window boundaries. A cached
allow is reused only for the same input (minus ``now`` and ``subject``, which the policy never
reads — checked when the modules load), the same compiled data, and a ``now`` inside the boundary
interval it was computed in. Refusals are not cached (their reasons quote the time).

Trust assumption: the modules and data are the operator's and the input is built from verified data
(exchange.ports). Fail closed: any evaluation failure, an undefined result or a malformed decision
document is a refusal with a reason, never an exception on the exchange path.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping
from datetime import datetime

from exchange.ports import JsonValue, PolicyDecision, PolicyInput
from policies._internal.rego import CompiledQuery, RegoFailure
from policies.data import DATA_ROOT, empty_policy_data
from policies.document import (
    REASON_EVALUATION_FAILED,
    EvaluationFailed,
    decide_with,
)
from policies.errors import PolicyCompileError
from policies.modules import DECISION_QUERY, policy_modules

__all__ = ["EmbeddedRegoEngine"]


class EmbeddedRegoEngine:
    """In-process Rego (rego-cpp via ``regopy``); thread-safe; data swapped atomically."""

    def __init__(
        self,
        data: Mapping[str, JsonValue] | None = None,
        *,
        modules: Mapping[str, str] | None = None,
    ) -> None:
        self._modules = dict(modules) if modules is not None else policy_modules()
        if not self._modules:
            raise PolicyCompileError("no policy modules to load")
        # Caching is exact only if the policy never reads the inputs the key leaves out (``now``
        # is read, but only against window boundaries: the interval stands in for it).
        self._cacheable = not any(
            re.search(rf"\binput\.{name}\b", src)
            for src in self._modules.values()
            for name in _UNREAD
            if name != "now"
        )
        self._caches: dict[int, _DecisionCache] = {}
        self._compiled = self._compile(data if data is not None else empty_policy_data())

    def load_data(self, data: Mapping[str, JsonValue]) -> None:
        """Replace the policy data document (``data.registry``); raises ``PolicyCompileError``."""
        compiled = self._compile(data)
        self._compiled = compiled  # one reference swap: decisions see old or new, never a mix

    def decide(self, request: PolicyInput) -> PolicyDecision:
        return decide_with(request, self.evaluate)

    def evaluate(self, input_doc: dict[str, JsonValue]) -> Mapping[str, JsonValue] | None:
        """The raw decision document for an input document (``None`` when undefined)."""
        compiled = self._compiled
        cache = self._caches.get(id(compiled))
        key = interval = None
        if cache is not None and self._cacheable:
            key = json.dumps(
                {k: v for k, v in input_doc.items() if k not in _UNREAD}, sort_keys=True
            )
            interval = cache.interval(str(input_doc.get("now", "")))
            hit = cache.entries.get(key)
            if hit is not None and interval is not None and hit[0] == interval:
                return hit[1]
        try:
            defined, value = compiled.evaluate(input_doc)
        except RegoFailure as exc:
            raise EvaluationFailed(REASON_EVALUATION_FAILED) from exc
        if not defined:
            return None
        if not isinstance(value, dict):
            return {}
        if (
            cache is not None
            and key is not None
            and interval is not None
            and value.get("allow") is True
        ):
            if len(cache.entries) >= MAX_CACHED_DECISIONS:
                cache.entries.clear()
            cache.entries[key] = (interval, value)
        return value

    def _compile(self, data: Mapping[str, JsonValue]) -> CompiledQuery:
        try:
            compiled = CompiledQuery(self._modules, {DATA_ROOT: dict(data)}, DECISION_QUERY)
        except RegoFailure as exc:
            raise PolicyCompileError(f"the policy does not compile with this data: {exc}") from exc
        # One cache per compiled data version; the old one goes with the old bundle.
        self._caches = {id(compiled): _DecisionCache(_window_boundaries(data))}
        return compiled


MAX_CACHED_DECISIONS = 10_000
_UNREAD = ("now", "subject")
_WINDOW_KEYS = frozenset({"not_before", "not_after"})


class _DecisionCache:
    """Allow decisions of one compiled data version, each tagged with its boundary interval."""

    def __init__(self, boundaries: list[str]) -> None:
        self._boundaries = [_parse(b) for b in boundaries]
        self._boundaries.sort()
        self.entries: dict[str, tuple[int, Mapping[str, JsonValue]]] = {}

    def interval(self, now: str) -> int | None:
        """Which interval between window boundaries ``now`` falls in (``None``: unparseable)."""
        try:
            moment = _parse(now)
        except ValueError:
            return None
        # Windows are [not_before, not_after): the decision changes *at* a boundary.
        return bisect.bisect_right(self._boundaries, moment)


def _parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("naive time")
    return moment


def _window_boundaries(data: JsonValue) -> list[str]:
    found: list[str] = []

    def walk(node: JsonValue) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in _WINDOW_KEYS and isinstance(v, str):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return found
