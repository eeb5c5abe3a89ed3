"""The consent package's public surface and its import boundaries (style rules 1, 3)."""

from __future__ import annotations

import ast
from pathlib import Path

import consent

PACKAGE = Path(consent.__file__).parent


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(consent.__all__) == [
        "Consent",
        "ConsentArtefactClaims",
        "ConsentArtefactVerifier",
        "ConsentHistoryEvent",
        "ConsentIssuerKey",
        "ConsentMode",
        "ConsentReceiptVerifier",
        "ConsentRequest",
        "ConsentRequestInput",
        "ConsentRequestStatus",
        "ConsentService",
        "ConsentStatus",
        "ConsentUse",
        "HistoryAction",
        "Purpose",
        "Receipt",
        "ReceiptContext",
        "RemoteConsentGate",
        "build_receipt",
        "render_receipt_html",
    ]
    for name in consent.__all__:
        assert getattr(consent, name) is not None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_api_imports_the_web_framework_and_no_sibling_package_is_imported() -> None:
    for path in PACKAGE.rglob("*.py"):
        imported = _imports(path)
        assert not imported & {"policies", "audit", "adapters", "procedures", "portal"}, path
        if path.name != "api.py":
            assert not imported & {"fastapi", "starlette"}, path
        if path.name != "artefact.py":
            assert not imported & {"cryptography", "jwt"}, path
