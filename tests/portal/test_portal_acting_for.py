"""The portal's "acting for …" (issue 16, item 4): a representative switches to acting for the
person a mandate represents, manages their consents, and the represented person's consent history
shows who acted; a mandate that does not cover the consent is refused. In-process portal over the
real consent service and logs (tests/portal/portal_world.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta

from consent.mandates import MandateRegistration
from tests.consent.consent_factories import ALICE, BOB
from tests.portal.portal_client import PortalClient
from tests.portal.portal_world import World


def run(world: World, scenario: Callable[[PortalClient], Awaitable[None]]) -> None:
    async def go() -> None:
        async with PortalClient(world) as c:
            await scenario(c)

    asyncio.run(go())


def _mandate(world: World, purposes: list[str]) -> str:
    """Bob, Alice's parent, registered from the household record by an operator."""
    registration = MandateRegistration.model_validate(
        {
            "representative": BOB,
            "represented": ALICE,
            "kind": "parent",
            "purposes": purposes,
            "valid_from": (world.now - timedelta(hours=1)).isoformat(),
            "valid_until": (world.now + timedelta(days=365)).isoformat(),
            "basis": "household record",
        }
    )
    return world.consent.mandates().register(registration, by="op", now=world.now).id


def test_a_parent_acts_for_a_child_in_the_portal_and_the_child_sees_who_acted(
    world: World,
) -> None:
    mid = _mandate(world, ["*"])
    rid = world.alice_request.id

    async def parent(c: PortalClient) -> None:
        await c.sign_in(BOB)
        page = await c.get("/mandates")
        assert page.status_code == 200
        assert f'data-mandate="{mid}"' in page.text
        assert "山田 花子" in page.text  # Alice, by her name
        assert (await c.post("/acting", {"mandate_id": mid})).status_code == 303
        consents = await c.get("/consents")
        assert f'data-acting-for="{mid}"' in consents.text  # the banner
        assert "山田 花子 さんの代理として操作中です。" in consents.text
        assert f'id="request-{rid}"' in consents.text  # Alice's pending request, not Bob's
        assert world.bob_consent.id not in consents.text
        assert (await c.post(f"/requests/{rid}/approve")).status_code == 303
        # ... and back to acting for himself
        assert (await c.post("/acting", {"mandate_id": ""})).status_code == 303
        mine = await c.get("/consents")
        assert "data-acting-for" not in mine.text
        assert world.bob_consent.id in mine.text
        # a mandate id that is not his is refused
        assert (await c.post("/acting", {"mandate_id": "0" * 36})).status_code == 404

    run(world, parent)
    granted = [c for c in world.consent.list_consents(ALICE, now=world.now) if c.request_id == rid]
    assert len(granted) == 1
    [event] = world.consent.history(ALICE, granted[0].id, now=world.now)
    assert event.actor == f"{BOB} for {ALICE} (mandate {mid})"

    async def child(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        history = await c.get("/consents/history?lang=en")
        assert "Done by a representative:" in history.text
        assert f"(mandate {mid})" in history.text
        mandates = await c.get("/mandates")
        assert f'data-mandate="{mid}"' in mandates.text  # who may act for her

    run(world, child)


def test_a_mandate_that_does_not_cover_the_purpose_is_refused_in_the_portal(
    world: World,
) -> None:
    mid = _mandate(world, ["child-allowance"])
    rid = world.alice_request.id

    async def parent(c: PortalClient) -> None:
        await c.sign_in(BOB)
        assert (await c.post("/acting", {"mandate_id": mid})).status_code == 303
        refused = await c.post(f"/requests/{rid}/approve")
        assert refused.status_code == 403

    run(world, parent)
    assert world.consent.get_request(ALICE, rid, now=world.now).status.value == "pending"
    entries = [json.loads(line)["entry"] for line in world.consent_log.export()]
    refusals = [e for e in entries if e.get("extra", {}).get("stage") == "mandate"]
    assert [(e["kind"], e["subject"], e["represented_party"]) for e in refusals] == [
        ("refusal", ALICE, f"PARENT/{mid}")
    ]
    assert "does not cover purpose" in refusals[0]["reason"]
