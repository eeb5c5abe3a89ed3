"""The Rego policy modules shipped with the package (``policies/rego/*.rego``).

Concept: the policy is text that legal staff can read and review; engines load it from here. The
decision is ``data.onceonly.exchange.decision`` (docs/policies.md, "The decision document").
Trust assumption: the installed package is the operator's; nothing is loaded from elsewhere.
"""

from __future__ import annotations

from importlib import resources

__all__ = [
    "DECISION_PACKAGE",
    "DECISION_QUERY",
    "DECISION_RULE",
    "TEST_SUFFIX",
    "policy_modules",
    "unit_test_modules",
]

DECISION_PACKAGE = "onceonly.exchange"
DECISION_RULE = "decision"
DECISION_QUERY = f"x := data.{DECISION_PACKAGE}.{DECISION_RULE}"
"""Bound to a variable: rego-cpp reads a bare ``false`` result as undefined."""

TEST_SUFFIX = "_test.rego"


def _read(*, tests: bool) -> dict[str, str]:
    folder = resources.files("policies") / "rego"
    found: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".rego"):
            continue
        if entry.name.endswith(TEST_SUFFIX) is tests:
            found[entry.name] = entry.read_text(encoding="utf-8")
    return found


def policy_modules() -> dict[str, str]:
    """The policy modules by file name, without the unit tests."""
    return _read(tests=False)


def unit_test_modules() -> dict[str, str]:
    """The Rego unit tests (``*_test.rego``) by file name."""
    return _read(tests=True)
