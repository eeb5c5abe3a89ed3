"""The Rego unit tests (policies/rego/exchange_test.rego) on the real OPA evaluator.

There is no ``opa`` binary on these machines (docs/notes/policy-engines.md), and rego-cpp
cannot run ``with``, so the tests run on OPA's own Go evaluator (v1.20.2) through the ctypes
bindings of ``opa-golib-python-bindings``. This does what

    opa test policies/rego/exchange.rego policies/rego/exchange_test.rego policies/rego/testdata

does: the policy modules and unit-test modules (``*_test.rego``) the package ships
(policies.modules) and the fixture data are loaded into one engine, every rule of a test package
named ``test_*`` is one pytest case, and a case passes only when its rule is
``true`` (undefined, ``false`` or an evaluation error fails it). Rules named ``todo_test_*`` are
skipped, as ``opa test`` skips them. Test rules are found by OPA's own parser
(``rego.parse_module``), not by a pattern over the source.

The bindings declare Python >= 3.14 but work on 3.11; install them with
``pip install --ignore-requires-python opa-golib-python-bindings==0.4.4``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies.modules import policy_modules, unit_test_modules

opa = pytest.importorskip(
    "opa_bindings",
    reason=(
        "the real OPA evaluator is not installed: pip install --ignore-requires-python "
        "opa-golib-python-bindings==0.4.4 (no opa binary exists here to run `opa test`)"
    ),
)

REGO = Path(__file__).resolve().parents[2] / "policies" / "rego"
# Loaded as `opa test` loads a data directory: each JSON file at the path of its directory
# relative to this root (testdata/registry/data.json -> data.registry), each .rego as a module.
TESTDATA = REGO / "testdata"
# The modules the package ships, by file name: the policy and its unit tests (*_test.rego).
POLICY_MODULES = policy_modules()
TEST_MODULES = unit_test_modules()


def _parse_module(name: str, source: str) -> dict[str, Any]:
    """OPA's AST of a module, from OPA's own parser."""
    with opa.OpaEngine() as engine:
        rows = engine.eval_query(
            "m := rego.parse_module(input.name, input.source)", {"name": name, "source": source}
        )
    assert rows, f"OPA could not parse {name}"
    module: dict[str, Any] = rows[0]["m"]
    return module


def _rule_name(rule: dict[str, Any]) -> str | None:
    head = rule["head"]
    if "name" in head:
        return str(head["name"])
    ref = head.get("ref", [])
    if len(ref) == 1 and ref[0]["type"] == "var":
        return str(ref[0]["value"])
    return None  # a multi-part rule head such as p.q[x] is never a test


def _discover() -> list[Any]:
    """One pytest case per test rule of every *_test.rego: (dotted package path, rule name)."""
    cases: list[Any] = []
    for file_name, source in TEST_MODULES.items():
        module = _parse_module(file_name, source)
        package = ".".join(str(term["value"]) for term in module["package"]["path"][1:])
        names = [n for n in (_rule_name(r) for r in module.get("rules", [])) if n is not None]
        # A second definition of a test would be OR-ed with the first into one document: one
        # passing definition would hide a failing one.
        twice = sorted({n for n in names if n.startswith("test_") and names.count(n) > 1})
        assert not twice, f"test rules defined more than once in {file_name}: {twice}"
        for rule in dict.fromkeys(names):
            if rule.startswith("test_"):
                cases.append(pytest.param(package, rule, id=rule))
            elif rule.startswith("todo_test_"):
                todo = pytest.mark.skip(reason=f"{rule} is a todo (opa test skips it too)")
                cases.append(pytest.param(package, rule, id=rule, marks=todo))
    return cases


CASES = _discover()


def _data_files() -> Iterator[tuple[str, Any]]:
    for path in sorted(TESTDATA.rglob("*")):
        if not path.is_file() or path.suffix == ".rego":
            continue
        assert path.suffix == ".json", f"only JSON test data is loaded here, not {path}"
        parts = path.parent.relative_to(TESTDATA).parts
        assert all("." not in p for p in parts), f"a data directory name has a dot: {path}"
        yield ".".join(parts), json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    with opa.OpaEngine() as eng:
        eng.print_handler = lambda _message, _location: None  # kept in eng.last_prints
        for name, source in {**POLICY_MODULES, **TEST_MODULES}.items():
            eng.add_policy(name, source)
        for module in sorted(TESTDATA.rglob("*.rego")):
            eng.add_policy(module.relative_to(REGO).as_posix(), module.read_text(encoding="utf-8"))
        for path, value in _data_files():
            eng.add_data(value, path=path)
        yield eng


def _why_undefined(engine: Any, document: str) -> str:
    """The conditions in the test modules that failed, from OPA's trace (with their locals)."""
    with contextlib.suppress(opa.OpaUndefinedError):
        engine.eval_document(document, trace=True)
    fails = [
        f"  {e['location']}: {e['node']}  locals={json.dumps(e.get('locals') or {})}"
        for e in engine.last_trace or []
        if e["op"] == "Fail" and str(e.get("location", "")).startswith(tuple(TEST_MODULES))
    ]
    return "\n".join(fails[-10:]) or "  (no failing condition in the test module was traced)"


def test_the_policy_and_its_unit_tests_are_loaded() -> None:
    assert "exchange.rego" in POLICY_MODULES
    assert "exchange_test.rego" in TEST_MODULES
    assert len(CASES) >= 1


@pytest.mark.parametrize(("package", "rule"), CASES)
def test_rego(engine: Any, package: str, rule: str) -> None:
    document = f"{package}.{rule}"
    try:
        value = engine.eval_document(document)
    except opa.OpaUndefinedError:
        pytest.fail(
            f"Rego test data.{document} is undefined (a condition failed):\n"
            + _why_undefined(engine, document)
        )
    assert value is True, f"Rego test data.{document} is {value!r}, not true"
