"""One compiled Rego query over fixed modules and data, evaluated with rego-cpp (``regopy``).

Concept: compile once, evaluate many times. The modules and the data are built into a bundle
(rego-cpp's compiled form) for one query; each evaluation only sets the input and runs the bundle,
which is ~10x cheaper than recompiling the query (../shared/notes/policy-engines.md). New modules
or data mean a new ``CompiledQuery``: callers swap the reference, so an evaluation in flight
finishes on the old one and the next sees the new one whole.

Trust assumption: modules and data are the operator's. rego-cpp is a reimplementation of OPA, so:
built-in errors are made strict (an unsupported built-in would otherwise read as undefined, and a
rule that silently stops matching could change a decision), and the query binds the result to a
variable (a bare ``false`` reads as undefined). One interpreter is not safe to share between
threads (input and query are two calls), so evaluations take a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import regopy

from exchange.ports import JsonValue

__all__ = ["RESULT_VAR", "CompiledQuery", "RegoFailure"]

RESULT_VAR = "x"


class RegoFailure(Exception):
    """rego-cpp refused the modules or the data, or failed to evaluate."""


class CompiledQuery:
    """``query`` (binding ``x``) compiled over ``modules`` and ``data``; thread-safe."""

    def __init__(
        self, modules: Mapping[str, str], data: Mapping[str, JsonValue], query: str
    ) -> None:
        interpreter = regopy.Interpreter()
        interpreter.strict_built_in_errors = True
        try:
            for name, source in modules.items():
                interpreter.add_module(name, source)
            interpreter.add_data_json(json.dumps(data))
            bundle = interpreter.build(query)
        except regopy.RegoError as exc:
            raise RegoFailure(str(exc)) from exc
        if not bundle.ok():
            raise RegoFailure(f"rego-cpp could not compile the query {query!r}")
        self._interpreter = interpreter
        self._bundle = bundle
        self._lock = threading.Lock()
        self.query = query

    def evaluate(self, input_doc: JsonValue) -> tuple[bool, JsonValue]:
        """``(True, value)`` when the result is defined, ``(False, None)`` when undefined."""
        try:
            with self._lock:
                self._interpreter.set_input(regopy.Input(input_doc))
                output = self._interpreter.query_bundle(self._bundle)
                ok = output.ok()
                results = output.results
        except (regopy.RegoError, ValueError, TypeError) as exc:
            raise RegoFailure(str(exc)) from exc
        if not ok:
            raise RegoFailure("rego-cpp reported an evaluation error")
        if not results or RESULT_VAR not in results[0].bindings:
            return False, None
        return True, results[0].bindings[RESULT_VAR]
