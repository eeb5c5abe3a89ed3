"""The embedded policy engine (the default): the shipped Rego, evaluated in-process by rego-cpp.

Concept: ``EmbeddedRegoEngine`` implements ``exchange.ports.PolicyDecider``. It compiles the policy
modules with the current policy data into one bundle for the decision query
(``x := data.onceonly.exchange.decision``); ``load_data`` compiles a new bundle off to the side
and swaps it in with one reference assignment, so a registry change takes effect without a restart
and no decision ever sees half of one data document.

Decisions are not cached: every input carries the time of the exchange, and time-of-validity rules
make a decision a function of it, so no two inputs are the same key (docs/policies.md,
"Performance").

Trust assumption: the modules and data are the operator's and the input is built from verified data
(exchange.ports). Fail closed: any evaluation failure, an undefined result or a malformed decision
document is a refusal with a reason, never an exception on the exchange path.
"""

from __future__ import annotations

from collections.abc import Mapping

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
        self._compiled = self._compile(data if data is not None else empty_policy_data())

    def load_data(self, data: Mapping[str, JsonValue]) -> None:
        """Replace the policy data document (``data.registry``); raises ``PolicyCompileError``."""
        compiled = self._compile(data)
        self._compiled = compiled  # one reference swap: decisions see old or new, never a mix

    def decide(self, request: PolicyInput) -> PolicyDecision:
        return decide_with(request, self.evaluate)

    def evaluate(self, input_doc: dict[str, JsonValue]) -> Mapping[str, JsonValue] | None:
        """The raw decision document for an input document (``None`` when undefined)."""
        try:
            defined, value = self._compiled.evaluate(input_doc)
        except RegoFailure as exc:
            raise EvaluationFailed(REASON_EVALUATION_FAILED) from exc
        if not defined:
            return None
        if not isinstance(value, dict):
            return {}
        return value

    def _compile(self, data: Mapping[str, JsonValue]) -> CompiledQuery:
        try:
            return CompiledQuery(self._modules, {DATA_ROOT: dict(data)}, DECISION_QUERY)
        except RegoFailure as exc:
            raise PolicyCompileError(f"the policy does not compile with this data: {exc}") from exc
