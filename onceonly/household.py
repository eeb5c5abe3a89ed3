"""Reads a parent's household from Machida's resident registry through a node (docs/consent.md,
"Statutory parent mandates"), for ``onceonly consent derive-parent-mandates``.

The one-stop subsystem asks its own node ``GET /r1/JP/GOV/132098/resident-registry/person/v1`` for
the parent and for each child named, with ``X-OnceOnly-Fields: household_id,birth_date,
relationship`` (minimisation) and purpose ``statutory-representation``, under the one-stop's
access right and statute 民法 第818条 (``adapters/reference/rights.py``): real signed exchanges, each with its ``X-Road-Id``, audited at both
nodes. The subjects are citizen ids (the one-stop's own code for a citizen, ``CITIZEN_AGENCY``); the
translator maps them to the registry's resident codes (docs/pseudonyms.md), so the consent service
gets citizen ids back without ever seeing a resident code.

A child qualifies when the registry puts them in the parent's household as 子 and the parent as
世帯主, 妻 or 夫 of that household (the reference registry's 続柄 are relative to the head).
"""

from __future__ import annotations

from datetime import date

from adapters.reference.registries import MACHIDA_MEMBER
from consent.statutory import Child, HouseholdAnswer
from exchange.errors import ClientError, TransportError
from procedures.one_stop import OneStopClient

__all__ = ["PERSON_SERVICE", "PURPOSE", "read_household"]

PERSON_SERVICE = f"{MACHIDA_MEMBER}/resident-registry/person/v1"
PURPOSE = "statutory-representation"
"""The purpose of the reads: the access right and statute 民法 第818条 (adapters/reference/rights.py)."""
FIELDS = ("household_id", "birth_date", "relationship")
PARENTS = frozenset({"世帯主", "妻", "夫"})
CHILD = "子"


async def _person(client: OneStopClient, subject: str) -> tuple[dict[str, object], str]:
    outcome = await client.read(PERSON_SERVICE, subject, fields=FIELDS)
    if outcome.kind == "transient":
        raise TransportError(f"the resident registry could not be asked: {outcome.reason}")
    if outcome.kind != "ok" or not isinstance(outcome.data, dict):
        raise ClientError(f"the resident registry refused or has no record: {outcome.reason}")
    return outcome.data, outcome.message_id


async def read_household(
    client: OneStopClient, parent: str, children: tuple[str, ...]
) -> tuple[HouseholdAnswer, list[str]]:
    """The parent's household with each named child the registry confirms (and the birth date it
    records), and the children it does not confirm."""
    record, parent_mid = await _person(client, parent)
    household = str(record.get("household_id") or "")
    if not household or record.get("relationship") not in PARENTS:
        raise ClientError("the resident registry does not record this person as a parent")
    found: list[Child] = []
    refused: list[str] = []
    for child in children:
        data, mid = await _person(client, child)
        if data.get("household_id") != household or data.get("relationship") != CHILD:
            refused.append(child)
            continue
        try:
            born = date.fromisoformat(str(data.get("birth_date")))
        except ValueError:
            raise ClientError("the resident registry gave no birth date for a child") from None
        found.append(Child(child, born, mid))
    return HouseholdAnswer(household, parent_mid, tuple(found)), refused
