"""One compiled Rego query over fixed modules and data, evaluated with rego-cpp (``regopy``).

Concept: compile once, evaluate many times. The modules and the data are built into a bundle
(rego-cpp's compiled form) for one query; each evaluation only sets the input and runs the bundle,
which is ~10x cheaper than recompiling the query (docs/notes/policy-engines.md). New modules
or data mean a new ``CompiledQuery``: callers swap the reference, so an evaluation in flight
finishes on the old one and the next sees the new one whole.

Trust assumption: modules and data are the operator's. rego-cpp is a reimplementation of OPA, so:
built-in errors are made strict (an unsupported built-in would otherwise read as undefined, and a
rule that silently stops matching could change a decision), and the query binds the result to a
variable (a bare ``false`` reads as undefined). One interpreter is not safe to share between
threads (input and query are two calls), so each evaluation borrows one from a small pool.
"""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Mapping

import regopy

from exchange.ports import JsonValue

__all__ = ["RESULT_VAR", "CompiledQuery", "RegoFailure"]

RESULT_VAR = "x"
DEFAULT_COPIES = min(4, os.cpu_count() or 1)
"""Interpreters compiled per data version: evaluations in parallel, one per core."""


class RegoFailure(Exception):
    """rego-cpp refused the modules or the data, or failed to evaluate."""


def _compile(
    modules: Mapping[str, str], data_json: str, query: str
) -> tuple[regopy.Interpreter, regopy.Bundle]:
    interpreter = regopy.Interpreter()
    interpreter.strict_built_in_errors = True
    try:
        for name, source in modules.items():
            interpreter.add_module(name, source)
        interpreter.add_data_json(data_json)
        bundle = interpreter.build(query)
    except regopy.RegoError as exc:
        raise RegoFailure(str(exc)) from exc
    if not bundle.ok():
        raise RegoFailure(f"rego-cpp could not compile the query {query!r}")
    return interpreter, bundle


class CompiledQuery:
    """``query`` (binding ``x``) compiled over ``modules`` and ``data``; thread-safe."""

    def __init__(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, JsonValue],
        query: str,
        *,
        copies: int = DEFAULT_COPIES,
    ) -> None:
        data_json = json.dumps(data)
        self._pool: queue.SimpleQueue[tuple[regopy.Interpreter, regopy.Bundle]] = (
            queue.SimpleQueue()
        )
        for _ in range(max(1, copies)):
            self._pool.put(_compile(modules, data_json, query))
        self.query = query

    def evaluate(self, input_doc: JsonValue) -> tuple[bool, JsonValue]:
        """``(True, value)`` when the result is defined, ``(False, None)`` when undefined."""
        # One interpreter serves one evaluation at a time (input and query are two calls); the
        # pool lets evaluations run in parallel: ctypes releases the GIL inside rego-cpp.
        interpreter, bundle = self._pool.get()
        try:
            interpreter.set_input(regopy.Input(input_doc))
            output = interpreter.query_bundle(bundle)
            ok = output.ok()
            results = output.results
        except (regopy.RegoError, ValueError, TypeError) as exc:
            raise RegoFailure(str(exc)) from exc
        finally:
            self._pool.put((interpreter, bundle))
        if not ok:
            raise RegoFailure("rego-cpp reported an evaluation error")
        if not results or RESULT_VAR not in results[0].bindings:
            return False, None
        return True, results[0].bindings[RESULT_VAR]
