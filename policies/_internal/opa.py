"""One prepared Rego query over fixed modules and data, evaluated in-process by OPA's own Go evaluator.

Concept: ``opa-golib-python-bindings`` wraps OPA's evaluator (v1.20) as a ctypes library
(``opa_bindings``). An ``OpaEngine`` holds the modules and the data; each distinct query string is
prepared once and kept until the engine's configuration changes. So a ``PreparedQuery`` is built
whole off to the side — modules added, data added, the query prepared by one warm-up evaluation —
and then only evaluated: no decision ever compiles anything. New data means a new
``PreparedQuery`` (the bindings' ``add_data`` deep-merges, so a removed access right could not be
taken out of an existing engine); callers swap the reference, as with ``policies._internal.rego``.

The bindings are optional: their wheel declares Python >= 3.14 but works on 3.11, so they are
installed with ``pip install --ignore-requires-python opa-golib-python-bindings==0.4.4``.
``unavailable_reason()`` says why they cannot be used here (``None`` when they can).

Trust assumption: modules and data are the operator's. Any error of the bindings (a conflict
between rules, a built-in error, a closed engine, input that cannot be encoded) is ``OpaFailure``;
the caller refuses (fail closed). One engine serialises its evaluations (the bindings' own lock);
ctypes releases the GIL while OPA evaluates.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from exchange.ports import JsonValue

__all__ = [
    "DISTRIBUTION",
    "INSTALL_HINT",
    "OpaFailure",
    "PreparedQuery",
    "bindings_version",
    "unavailable_reason",
]

DISTRIBUTION = "opa-golib-python-bindings"
INSTALL_HINT = f"pip install --ignore-requires-python {DISTRIBUTION}==0.4.4"


class OpaFailure(Exception):
    """OPA refused the modules or the data, or failed to evaluate."""


def _bindings() -> Any:
    """The ``opa_bindings`` module; raises ``ImportError`` (or ``OSError`` for the library)."""
    return importlib.import_module("opa_bindings")


def unavailable_reason() -> str | None:
    """Why OPA's evaluator cannot run in this process, or ``None`` when it can.

    Loads the native library once (an ``OpaEngine`` is created and closed): a wheel that imports
    but whose library does not load on this platform is as unavailable as a missing one.
    """
    try:
        opa = _bindings()
        engine = opa.OpaEngine()
        engine.close()
    except ImportError as exc:
        return f"{DISTRIBUTION} is not installed ({exc}); {INSTALL_HINT}"
    except (OSError, AttributeError) as exc:
        return f"{DISTRIBUTION} is installed but its library does not load here: {exc}"
    return None


def bindings_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


class PreparedQuery:
    """``document`` (a dotted path under ``data``) prepared over ``modules`` and ``data``."""

    def __init__(
        self,
        modules: Mapping[str, str],
        data: Mapping[str, JsonValue],
        document: str,
        *,
        warm_input: JsonValue = None,
    ) -> None:
        try:
            opa = _bindings()
        except (ImportError, OSError) as exc:
            raise OpaFailure(f"{DISTRIBUTION} cannot be loaded: {exc}") from exc
        self._opa = opa
        self.document = document
        try:
            engine = opa.OpaEngine()
        except (OSError, AttributeError) as exc:
            raise OpaFailure(f"{DISTRIBUTION} cannot be loaded: {exc}") from exc
        try:
            for name, source in modules.items():
                engine.add_policy(name, source)
            engine.add_data(json.loads(json.dumps(data)))  # plain JSON, whatever the mapping
            # The first evaluation parses and compiles the query and the modules it reaches; the
            # engine keeps the prepared query, so decisions only evaluate.
            self._evaluate_on(engine, {} if warm_input is None else warm_input)
        except OpaFailure:
            engine.close()
            raise
        except (opa.OpaError, ValueError, TypeError) as exc:
            engine.close()
            raise OpaFailure(str(exc)) from exc
        self._engine = engine

    def evaluate(self, input_doc: JsonValue) -> tuple[bool, JsonValue]:
        """``(True, value)`` when the document is defined, ``(False, None)`` when undefined."""
        return self._evaluate_on(self._engine, input_doc)

    def _evaluate_on(self, engine: Any, input_doc: JsonValue) -> tuple[bool, JsonValue]:
        opa = self._opa
        try:
            value: JsonValue = engine.eval_document(self.document, input_doc)
        except opa.OpaUndefinedError:
            return False, None
        except (opa.OpaError, ValueError, TypeError, OSError) as exc:
            raise OpaFailure(str(exc)) from exc
        return True, value

    def close(self) -> None:
        """Release the engine now (it is also released when the object is collected)."""
        self._engine.close()
