"""getOpenAPI documents generated from a declaration: valid OpenAPI 3.1, with the declared field
types as property schemas, and change operations as POST with a body and ``Idempotency-Key``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from adapters.config import load_registries
from adapters.factory import declared_services
from adapters.reference import reference_config

LIBRARY = """
[[registries]]
id = "JP/GOV/132098/library"
kind = "sql"
table = "library_cards"
key_column = "holder_id"

[[registries.services]]
code = "card"
version = "v1"
description = "The holder's library card"
purposes = ["library-services"]

[registries.services.fields]
card_number = "string"
expires_on = "date"
books_on_loan = "integer"
fines_yen = "number"
suspended = "boolean"
last_visit = "datetime"

[[registries.services]]
code = "renewal"
version = "v1"
description = "Renew the card"
purposes = ["library-services"]
change = { fields = ["expires_on", "suspended"], required = ["expires_on"] }

[registries.services.fields]
expires_on = "date"
suspended = "boolean"
"""

EXPECTED = {
    "string": {"type": "string"},
    "date": {"type": "string", "format": "date"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
}


def _types(schema: dict[str, Any]) -> dict[str, Any]:
    """Property name → its non-null schema (answer fields are nullable: minimisation drops any)."""
    out = {}
    for name, prop in schema["properties"].items():
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        (only,) = branches
        out[name] = {k: v for k, v in only.items() if k in ("type", "format")}
    return out


@pytest.fixture
def library(tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / "registries.toml"
    path.write_text(LIBRARY, encoding="utf-8")
    return {str(sid): doc for sid, _, doc in declared_services(load_registries(path))}


def test_every_reference_service_document_is_valid_openapi() -> None:
    docs = declared_services(reference_config())
    assert len(docs) == 17  # sixteen services and one change event (address-changed/v1)
    for _sid, _desc, doc in docs:
        validate(doc)  # raises on an invalid document


def test_a_read_is_a_get_whose_answer_has_the_declared_types(
    library: dict[str, dict[str, Any]],
) -> None:
    doc = library["JP/GOV/132098/library/card/v1"]
    validate(doc)
    (item,) = doc["paths"].values()
    assert list(item) == ["get"]
    op = item["get"]
    assert "requestBody" not in op
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert _types(schema) == {
        "card_number": EXPECTED["string"],
        "expires_on": EXPECTED["date"],
        "books_on_loan": EXPECTED["integer"],
        "fines_yen": EXPECTED["number"],
        "suspended": EXPECTED["boolean"],
        "last_visit": EXPECTED["datetime"],
    }
    params = {p["name"]: p for p in op["parameters"]}
    assert params["X-OnceOnly-Purpose"]["schema"]["enum"] == ["library-services"]
    assert params["X-Road-Client"]["required"] is True
    assert "Idempotency-Key" not in params


def test_a_change_is_a_post_with_a_typed_body_and_a_required_idempotency_key(
    library: dict[str, dict[str, Any]],
) -> None:
    doc = library["JP/GOV/132098/library/renewal/v1"]
    validate(doc)
    (item,) = doc["paths"].values()
    assert list(item) == ["post"]
    op = item["post"]
    body = op["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert _types(schema) == {"expires_on": EXPECTED["date"], "suspended": EXPECTED["boolean"]}
    assert schema["required"] == ["expires_on"]
    assert schema["additionalProperties"] is False
    key = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
    assert (key["in"], key["required"]) == ("header", True)
    assert op["x-onceonly-changes"] is True
