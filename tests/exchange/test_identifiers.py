"""Identifiers parse strictly and print back the same text."""

from __future__ import annotations

import pytest

from exchange.errors import ClientError
from exchange.identifiers import ClientId, MemberId, ServiceId


@pytest.mark.parametrize(
    "text",
    [
        "JP/GOV/132098/resident-registry/address",
        "JP/GOV/132098/resident-registry/address/v1",
        "JP/COM/9000000000002/gas/contract/v1",
    ],
)
def test_service_ids_round_trip(text: str) -> None:
    assert str(ServiceId.parse(text)) == text


def test_client_and_member_ids_round_trip() -> None:
    c = ClientId.parse("JP/GOV/132098/municipal-tax")
    assert c.member == MemberId("JP", "GOV", "132098")
    assert str(c) == "JP/GOV/132098/municipal-tax"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "JP/GOV",
        "JP/GOV/132098/a b",
        "JP//132098/x",
        "JP/GOV/132098/x/y/z/w",
        "JP/GOV/<script>/x",
        "JP/GOV/132098/" + "x" * 65,
    ],
)
def test_malformed_client_ids_are_client_errors(text: str) -> None:
    with pytest.raises(ClientError):
        ClientId.parse(text)


def test_unversioned_drops_the_version() -> None:
    assert str(ServiceId.parse("JP/GOV/1/s/a/v2").unversioned) == "JP/GOV/1/s/a"
