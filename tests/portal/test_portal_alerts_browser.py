"""The alerts pages in Debian's Chromium (Playwright) against the portal served by a real uvicorn
server on 127.0.0.1: the citizen opens the inbox from the menu, marks an alert read, turns a rule
off and gives an e-mail address; the pages in Japanese and English."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alerts.inbox import AlertInbox
from alerts.worker import citizen_key
from tests.consent.consent_factories import ALICE
from tests.portal.live_server import serve
from tests.portal.portal_world import World
from tests.portal.test_portal_alerts import alert_world  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 15_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("the playwright package is not installed", allow_module_level=True)


@pytest.fixture
def page(alert_world: tuple[World, AlertInbox]) -> Iterator[tuple[Any, str]]:  # noqa: F811
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    world, _ = alert_world
    with serve(world.app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(java_script_enabled=True)
            context.set_default_timeout(TIMEOUT_MS)
            yield context.new_page(), base + "/portal"
        finally:
            browser.close()


def test_citizen_reads_alerts_and_changes_alert_settings(
    page: tuple[Any, str],
    alert_world: tuple[World, AlertInbox],  # noqa: F811
) -> None:
    p, base = page
    world, inbox = alert_world
    p.goto(base + "/signin")
    p.get_by_label("山田 花子").check()
    p.get_by_role("button", name="ログイン").click()
    p.get_by_role("link", name="お知らせ", exact=True).click()
    p.wait_for_selector("h1:has-text('お知らせ（アラート）')")
    rows = p.locator("tr.alert-row")
    assert rows.count() == 5
    assert p.locator("tr[data-rule='read-without-consent']").count() == 1
    assert "ps-alice" not in p.content()
    p.screenshot(path=str(SCREENSHOTS / "alerts-ja.png"), full_page=True)

    first = rows.first
    alert_id = first.get_attribute("data-id")
    first.get_by_role("button", name="既読にする").click()
    p.wait_for_selector(".flash")
    assert p.locator(f"tr[data-id='{alert_id}']").get_attribute("data-read") == "true"
    assert p.locator(".alerts-unread").get_attribute("data-unread") == "4"

    p.get_by_role("link", name="お知らせの設定").click()
    p.wait_for_selector("h1:has-text('お知らせの設定')")
    p.get_by_label("いつもより多い照会").uncheck()
    p.get_by_label("メールアドレス（任意）").fill("hanako@mail.example")
    p.get_by_role("button", name="保存する").click()
    p.wait_for_selector(".flash")
    assert not p.get_by_label("いつもより多い照会").is_checked()
    assert p.get_by_label("メールアドレス（任意）").input_value() == "hanako@mail.example"

    p.get_by_role("link", name="English").click()
    p.wait_for_selector("h1:has-text('Alert settings')")
    p.get_by_role("link", name="Alerts", exact=True).click()
    p.wait_for_selector("h1:has-text('Alerts')")
    assert p.get_by_text("Read by a private organisation without your consent").count() == 1
    p.screenshot(path=str(SCREENSHOTS / "alerts-en.png"), full_page=True)

    keys = {citizen_key(world.log.origin, s) for s in ("ps-alice", ALICE)}
    saved = inbox.settings(keys)
    assert saved.email == "hanako@mail.example"
    assert saved.enabled["unusual-volume"] is False
    assert saved.enabled["refused"] is True
