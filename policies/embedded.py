"""The rego-cpp policy engine: the shipped Rego, evaluated in-process by rego-cpp (``regopy``).

Concept: ``EmbeddedRegoEngine`` is an ``InProcessEngine`` (policies.inprocess: data swapped whole,
exact allow cache, fail closed) whose compiled form is a rego-cpp bundle of the policy modules and
the current policy data for the decision query (``x := data.onceonly.exchange.decision``). It is
the engine a node uses when OPA's own evaluator cannot be loaded in-process (``policies.engine``),
or when ``ONCEONLY_POLICY_ENGINE=regopy`` asks for it.

Trust assumption: as ``policies.inprocess``; rego-cpp's divergences from OPA are worked around in
the policy and in ``policies._internal.rego`` (docs/policies.md), and the decision table
(tests/policies/decisions.json) checks that it gives OPA's decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata

from exchange.ports import JsonValue
from policies._internal.rego import CompiledQuery, RegoFailure
from policies.inprocess import MAX_CACHED_DECISIONS, Compiled, EngineFailure, InProcessEngine
from policies.modules import DECISION_QUERY

__all__ = ["MAX_CACHED_DECISIONS", "EmbeddedRegoEngine"]


class _RegoCompiled:
    def __init__(self, query: CompiledQuery) -> None:
        self._query = query

    def evaluate(self, input_doc: JsonValue) -> tuple[bool, JsonValue]:
        try:
            return self._query.evaluate(input_doc)
        except RegoFailure as exc:
            raise EngineFailure(str(exc)) from exc


class EmbeddedRegoEngine(InProcessEngine):
    """In-process Rego (rego-cpp via ``regopy``); thread-safe; data swapped atomically."""

    name = "regopy"

    @property
    def description(self) -> str:
        try:
            version = metadata.version("regopy")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return f"rego-cpp in-process (regopy {version})"

    def _compile(self, modules: Mapping[str, str], data: Mapping[str, JsonValue]) -> Compiled:
        try:
            return _RegoCompiled(CompiledQuery(modules, data, DECISION_QUERY))
        except RegoFailure as exc:
            raise EngineFailure(str(exc)) from exc
