"""Text a database cannot store is refused at the wire model (a 400), never at the database (a
500): found by schemathesis against the consent service on PostgreSQL, which refuses NUL in text."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from consent.model import ConsentRequestInput

REQUEST: dict[str, Any] = {
    "subject": "ps-alice",
    "subject_agency": "client",
    "valid_from": "2026-12-02T07:55:38Z",
    "valid_until": "2027-01-01T00:00:00Z",
    "purpose": {"text_en": "child allowance", "text_ja": "児童手当", "code": "child-allowance"},
    "legal_text_version": "v1",
    "fields": ["address"],
    "mode": "one-time",
    "client": "JP/GOV/132098/child-allowance",
    "data_retention_days": 1,
    "services": ["JP/GOV/132098/resident-registry/address"],
}


def test_a_well_formed_request_is_accepted() -> None:
    assert ConsentRequestInput.model_validate(REQUEST).subject == "ps-alice"


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "ps-\x00alice"},
        {"legal_text_version": "v\x001"},
        {"purpose": REQUEST["purpose"] | {"text_en": "child\x00allowance"}},
    ],
    ids=["subject", "legal-text-version", "purpose-text"],
)
def test_nul_in_any_text_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        ConsentRequestInput.model_validate(REQUEST | change)
