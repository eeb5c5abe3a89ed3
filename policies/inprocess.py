"""Engines that evaluate the shipped Rego in this process: the shared part, and OPA's own evaluator.

Concept: an in-process engine compiles the policy modules with the current policy data once per
data version (``_compile``: a rego-cpp bundle, or an OPA engine with the decision query prepared),
swaps the compiled form in with one reference assignment, and then only evaluates: no decision
recompiles anything, and ``load_data`` with the document already loaded changes nothing. Two
engines share this: ``OpaInProcessEngine`` (OPA's Go evaluator through
``opa-golib-python-bindings``, name ``opa-inprocess``) and ``policies.embedded.EmbeddedRegoEngine``
(rego-cpp through ``regopy``, name ``regopy``); ``policies.engine`` picks one at start-up.

Allow decisions are cached exactly: the policy reads ``input.now`` only against the validity
windows in the data, so a decision is constant between two consecutive window boundaries. A cached
allow is reused only for the same input (minus ``now`` and ``subject``, which the policy never
reads — checked when the modules load), the same compiled data, and a ``now`` inside the boundary
interval it was computed in. Refusals are not cached (their reasons quote the time). ``cache=False``
turns the cache off (benchmarks of uncached decisions).

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
from typing import Protocol

from exchange.ports import JsonValue, PolicyDecision, PolicyInput
from policies._internal.opa import OpaFailure, PreparedQuery, bindings_version
from policies.data import DATA_ROOT, empty_policy_data
from policies.document import REASON_EVALUATION_FAILED, EvaluationFailed, decide_with
from policies.errors import PolicyCompileError
from policies.modules import DECISION_PACKAGE, DECISION_RULE, policy_modules

__all__ = ["MAX_CACHED_DECISIONS", "InProcessEngine", "OpaInProcessEngine"]

MAX_CACHED_DECISIONS = 10_000
_UNREAD = ("now", "subject")
_WINDOW_KEYS = frozenset({"not_before", "not_after"})


class Compiled(Protocol):
    """The modules and one data version, compiled for the decision query."""

    def evaluate(self, input_doc: JsonValue) -> tuple[bool, JsonValue]: ...


class EngineFailure(Exception):
    """What ``_compile`` and ``Compiled.evaluate`` raise in a subclass, wrapped by it."""


class InProcessEngine:
    """The shared part of the in-process engines: data swap, exact cache, fail closed."""

    name = "in-process"
    """What the engine is, as the node reports it (log line at start, ``/healthz``, ``/metrics``)."""

    def __init__(
        self,
        data: Mapping[str, JsonValue] | None = None,
        *,
        modules: Mapping[str, str] | None = None,
        cache: bool = True,
    ) -> None:
        self._modules = dict(modules) if modules is not None else policy_modules()
        if not self._modules:
            raise PolicyCompileError("no policy modules to load")
        # Caching is exact only if the policy never reads the inputs the key leaves out (``now``
        # is read, but only against window boundaries: the interval stands in for it).
        self._cacheable = cache and not any(
            re.search(rf"\binput\.{name}\b", src)
            for src in self._modules.values()
            for name in _UNREAD
            if name != "now"
        )
        self._caches: dict[int, _DecisionCache] = {}
        self._fingerprint: str | None = None
        self._compiled = self._load(data if data is not None else empty_policy_data())

    @property
    def description(self) -> str:
        """The engine and its version, for people (the start-up log line)."""
        return self.name

    def load_data(self, data: Mapping[str, JsonValue]) -> None:
        """Replace the policy data document (``data.registry``); raises ``PolicyCompileError``.

        The same document again (a registry whose policy data did not change) keeps the compiled
        form and its cache; another one is compiled off to the side and swapped in whole."""
        if self._fingerprint is not None and _fingerprint(data) == self._fingerprint:
            return
        compiled = self._load(data)
        self._compiled = compiled  # one reference swap: decisions see old or new, never a mix

    def decide(self, request: PolicyInput) -> PolicyDecision:
        return decide_with(request, self.evaluate)

    def evaluate(self, input_doc: dict[str, JsonValue]) -> Mapping[str, JsonValue] | None:
        """The raw decision document for an input document (``None`` when undefined)."""
        compiled = self._compiled
        cache = self._caches.get(id(compiled)) if self._cacheable else None
        key = interval = None
        if cache is not None:
            key = json.dumps(
                {k: v for k, v in input_doc.items() if k not in _UNREAD}, sort_keys=True
            )
            interval = cache.interval(str(input_doc.get("now", "")))
            hit = cache.entries.get(key)
            if hit is not None and interval is not None and hit[0] == interval:
                return hit[1]
        try:
            defined, value = compiled.evaluate(input_doc)
        except EngineFailure as exc:
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

    def _load(self, data: Mapping[str, JsonValue]) -> Compiled:
        try:
            compiled = self._compile(self._modules, {DATA_ROOT: dict(data)})
        except EngineFailure as exc:
            raise PolicyCompileError(f"the policy does not compile with this data: {exc}") from exc
        # One cache per compiled data version; the old one goes with the old compiled form.
        self._caches = {id(compiled): _DecisionCache(_window_boundaries(data))}
        self._fingerprint = _fingerprint(data)
        return compiled

    def _compile(self, modules: Mapping[str, str], data: Mapping[str, JsonValue]) -> Compiled:
        """The modules and ``data`` compiled for the decision query; raises ``EngineFailure``."""
        raise NotImplementedError


class _OpaCompiled:
    def __init__(self, query: PreparedQuery) -> None:
        self._query = query

    def evaluate(self, input_doc: JsonValue) -> tuple[bool, JsonValue]:
        try:
            return self._query.evaluate(input_doc)
        except OpaFailure as exc:
            raise EngineFailure(str(exc)) from exc


class OpaInProcessEngine(InProcessEngine):
    """OPA's own evaluator in this process (``opa-golib-python-bindings``); thread-safe.

    Raises ``PolicyCompileError`` when the bindings cannot be loaded: check
    ``policies._internal.opa.unavailable_reason()`` first (``policies.engine`` does)."""

    name = "opa-inprocess"

    @property
    def description(self) -> str:
        return f"OPA's Go evaluator in-process (opa-golib-python-bindings {bindings_version()})"

    def _compile(self, modules: Mapping[str, str], data: Mapping[str, JsonValue]) -> Compiled:
        try:
            query = PreparedQuery(modules, data, f"{DECISION_PACKAGE}.{DECISION_RULE}")
        except OpaFailure as exc:
            raise EngineFailure(str(exc)) from exc
        return _OpaCompiled(query)


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


def _fingerprint(data: Mapping[str, JsonValue]) -> str:
    """The document as canonical JSON: equal documents, equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


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
