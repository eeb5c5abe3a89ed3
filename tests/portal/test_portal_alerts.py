"""The citizen's alerts pages (issue 15 item 6): the inbox lists the alerts the node's worker
raised from its log, in Japanese and English, with no pseudonym on the page; an alert is marked
read; the settings form turns rules off and sets the e-mail address at every node."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import pytest

from alerts.inbox import AlertInbox
from alerts.worker import AlertWorker, citizen_key
from policies.alerts import AlertRules
from portal.local import LocalAlerts
from portal.ports import AlertsBackend
from tests.consent.consent_factories import ALICE, BOB, POWER
from tests.portal.portal_client import PortalClient
from tests.portal.portal_world import (
    NODE,
    World,
    build_world,
    exchange_event,
    subjects_of,
)

_ROW = re.compile(
    r'<tr class="alert-row[^"]*" data-rule="([\w-]+)" data-id="(\d+)" data-node="([^"]+)" data-read="(\w+)">'
)


@pytest.fixture
def alert_world(db_url: str, make_db_url: object, tmp_path: Path) -> tuple[World, AlertInbox]:
    backends: dict[str, AlertsBackend] = {}
    world = build_world(db_url, make_db_url(), tmp_path, alerts=backends)  # type: ignore[operator]
    engine = world.log._engine
    # A private company reads Alice's address on a statute, not on her consent.
    world.log.append(
        exchange_event(
            world.now - timedelta(hours=1), "ps-alice", client=str(POWER), basis="statute:x"
        )
    )
    AlertWorker(world.log, engine, AlertRules(), node=NODE).run_once()
    inbox = AlertInbox(engine, world.log.log_id)
    backends[NODE] = LocalAlerts(inbox, world.log.origin, subjects_of)
    return world, inbox


def _rows(html: str) -> list[tuple[str, str, str, str]]:
    return _ROW.findall(html)


def test_the_inbox_lists_the_citizens_alerts_in_both_languages(
    alert_world: tuple[World, AlertInbox],
) -> None:
    world, _ = alert_world

    async def main() -> None:
        async with PortalClient(world) as client:
            await client.sign_in(ALICE)
            page = await client.get("/alerts")
            assert page.status_code == 200
            rules = sorted(r[0] for r in _rows(page.text))
            assert rules == [
                "new-recipient",
                "new-recipient",
                "new-recipient",
                "read-without-consent",
                "refused",
            ]
            assert "同意によらない民間事業者による照会" in page.text
            assert 'data-unread="5"' in page.text
            assert "ps-alice" not in page.text
            assert "お知らせ" in page.text
            english = await client.get("/alerts?lang=en")
            assert "Read by a private organisation without your consent" in english.text
            assert "5 unread" in english.text
        async with PortalClient(world) as client:
            await client.sign_in(BOB)
            bob = await client.get("/alerts")
            assert [r[0] for r in _rows(bob.text)] == ["new-recipient"]

    asyncio.run(main())


def test_an_alert_is_marked_read_and_another_citizens_is_not_found(
    alert_world: tuple[World, AlertInbox],
) -> None:
    world, _ = alert_world

    async def main() -> None:
        async with PortalClient(world) as client:
            await client.sign_in(BOB)
            bobs = _rows((await client.get("/alerts")).text)
        async with PortalClient(world) as client:
            await client.sign_in(ALICE)
            rows = _rows((await client.get("/alerts")).text)
            target = rows[0]
            done = await client.post("/alerts/read", {"node": target[2], "alert": target[1]})
            assert done.status_code == 303
            after = _rows((await client.get("/alerts?done=alert_read")).text)
            assert {r[1]: r[3] for r in after}[target[1]] == "true"
            other = await client.post("/alerts/read", {"node": NODE, "alert": bobs[0][1]})
            assert other.status_code == 404
            no_csrf = await client.post(
                "/alerts/read", {"node": NODE, "alert": target[1]}, csrf=False
            )
            assert no_csrf.status_code == 403

    asyncio.run(main())


def test_settings_turn_rules_off_and_set_the_email(alert_world: tuple[World, AlertInbox]) -> None:
    world, inbox = alert_world

    async def main() -> None:
        async with PortalClient(world) as client:
            await client.sign_in(ALICE)
            form = await client.get("/alerts/settings")
            assert form.status_code == 200
            assert form.text.count('type="checkbox"') == 4
            assert "メールアドレス" in form.text
            saved = await client.post(
                "/alerts/settings",
                {"rule-refused": "on", "rule-new-recipient": "on", "email": "hanako@mail.example"},
            )
            assert saved.status_code == 303
            bad = await client.post("/alerts/settings", {"email": "not an address"})
            assert bad.status_code == 400

    asyncio.run(main())
    keys = {citizen_key(world.log.origin, s) for s in ("ps-alice", ALICE)}
    got = inbox.settings(keys)
    assert got.email == "hanako@mail.example"
    assert got.enabled == {
        "read-without-consent": False,
        "new-recipient": True,
        "unusual-volume": False,
        "refused": True,
    }
