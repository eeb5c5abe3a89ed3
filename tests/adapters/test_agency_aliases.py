"""Subject translation at the provider: aliases, and a cache that never remembers a miss."""

from __future__ import annotations

import pytest

from adapters.aliases import AgencyAliases
from exchange.errors import NotFoundError
from exchange.ports import CITIZEN_AGENCY


class CountingTranslator:
    """A translator over a fixed table that counts its lookups."""

    def __init__(self, table: dict[tuple[str, str, str], str]) -> None:
        self.table = table
        self.lookups = 0

    def translate(self, subject: str, *, from_agency: str, to_agency: str) -> str:
        self.lookups += 1
        try:
            return self.table[(subject, from_agency, to_agency)]
        except KeyError:
            raise NotFoundError("unknown pseudonym") from None


def test_found_translations_are_remembered() -> None:
    inner = CountingTranslator({("P1", "tax", "residents"): "R1"})
    aliases = AgencyAliases(inner, {})
    assert aliases.translate("P1", from_agency="tax", to_agency="residents") == "R1"
    assert aliases.translate("P1", from_agency="tax", to_agency="residents") == "R1"
    assert inner.lookups == 1


def test_unknown_subjects_are_asked_again_not_remembered() -> None:
    inner = CountingTranslator({})
    aliases = AgencyAliases(inner, {})
    for _ in range(2):
        with pytest.raises(NotFoundError):
            aliases.translate("P9", from_agency="tax", to_agency="residents")
    assert inner.lookups == 2
    inner.table[("P9", "tax", "residents")] = "R9"  # enrolled meanwhile
    assert aliases.translate("P9", from_agency="tax", to_agency="residents") == "R9"


def test_the_one_stop_desk_speaks_for_the_citizen() -> None:
    inner = CountingTranslator({("C1", CITIZEN_AGENCY, "residents"): "R1"})
    aliases = AgencyAliases(inner, {"one-stop": CITIZEN_AGENCY})
    assert aliases.translate("C1", from_agency="one-stop", to_agency="residents") == "R1"
    assert aliases.translate("C1", from_agency="one-stop", to_agency=CITIZEN_AGENCY) == "C1"
