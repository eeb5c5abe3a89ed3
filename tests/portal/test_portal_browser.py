"""Browser tests: Playwright for Python driving Debian's Chromium (never a downloaded browser)
against the portal served by a real uvicorn server on 127.0.0.1. Screenshots of the main pages go
to ``test-artifacts/screenshots/``."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Mount

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from exchange.db import make_engine, upgrade
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import ConsentQuery
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from portal import build_portal
from portal.local import LocalConsent, LocalDesk, local_logs
from tests.consent.consent_factories import ALICE
from tests.portal.live_server import serve
from tests.portal.portal_world import NODE, World, exchange_event
from tests.procedures.helpers import Federation, running_federation, utc_now

NEW_ADDRESS = "東京都町田市原町田三丁目4番5号"

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 15_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("the playwright package is not installed", allow_module_level=True)


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A fresh browser context of Debian's Chromium."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(java_script_enabled=True)
            context.set_default_timeout(TIMEOUT_MS)
            yield context
        finally:
            browser.close()


@pytest.fixture
def page(world: World, chromium: Any) -> Iterator[tuple[Any, str]]:
    with serve(world.app) as base:
        yield chromium.new_page(), base + "/portal"


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, base: str, who_label: str) -> None:
    page.goto(base + "/signin")
    page.get_by_label(who_label).check()
    shot(page, "signin")
    page.get_by_role("button", name="ログイン").click()


def test_citizen_revokes_a_consent_and_sees_the_next_exchange_refused_and_verified(
    page: tuple[Any, str], world: World
) -> None:
    p, base = page
    sign_in(p, base, "山田 花子")
    p.wait_for_selector("h1:has-text('わたしの同意')")
    shot(p, "consents-ja")
    cid = world.alice_consent.id
    row = p.locator(f"#consent-{cid}")
    assert row.get_attribute("data-status") == "active"
    row.get_by_role("link", name="撤回…").click()
    p.wait_for_selector("h1:has-text('同意の撤回')")
    shot(p, "revoke-confirm")
    p.get_by_role("button", name="撤回する").click()
    p.wait_for_selector(".flash")
    assert p.locator(f"#consent-{cid}").get_attribute("data-status") == "revoked"

    # The next exchange relying on the consent: the provider node asks the consent gate, which
    # refuses, and records the refusal in its log (as exchange.node does).
    now = world.now
    decision = world.consent.check(
        ConsentQuery(
            consent_id=cid,
            artefact=world.alice_consent.artefact,
            subject=ALICE,
            client=ClientId.parse(world.alice_consent.client),
            service=ServiceId.parse(world.alice_consent.services[0]),
            purpose=world.alice_consent.purpose.code,
            fields=world.alice_consent.fields,
            now=now,
            message_id=str(uuid.uuid4()),
        )
    )
    assert not decision
    world.log.append(
        exchange_event(
            now,
            "ps-alice",
            client=world.alice_consent.client,
            decision="deny",
            consent_id=cid,
            basis=None,
            reason="consent revoked",
        )
    )
    world.log.sign_checkpoint(now)

    # The revocation is in the consent service's own log: the consent history shows it with its
    # proof, checked against the pinned consent log key once a checkpoint covers it.
    p.get_by_role("link", name="同意の記録", exact=True).click()
    p.wait_for_selector("h1:has-text('同意の記録')")
    revoked = p.locator("tr.history-entry", has_text=cid).filter(has_text="同意の撤回")
    assert revoked.get_attribute("data-outcome") == "ok"
    assert "検証済み" in revoked.inner_text()
    granted = p.locator("tr.history-entry", has_text=cid).filter(has_text="同意の付与")
    assert granted.get_attribute("data-outcome") == "ok"
    complete = p.locator("ul.completeness li")
    assert complete.get_attribute("data-status") == "ok"
    assert "検証しました" in complete.inner_text()
    shot(p, "consent-history-ja")

    p.get_by_role("link", name="わたしの情報の利用履歴").click()
    p.wait_for_selector("ol.timeline")
    # Every node's record of Alice is proven complete against its signed subject map.
    statuses = p.locator("ul.completeness li")
    assert statuses.count() >= 1
    for i in range(statuses.count()):
        assert statuses.nth(i).get_attribute("data-status") == "ok"
    assert "検証しました" in statuses.first.inner_text()
    # The refused exchange is in the provider node's log (the revocation is in the consent log).
    first = p.locator("li.entry[data-decision='deny']", has_text=cid).first
    assert "拒否" in first.inner_text()
    shot(p, "access-ja")
    first.get_by_role("button", name="検証").click()
    p.wait_for_selector(".verification")
    assert p.locator(".verification").get_attribute("data-outcome") == "ok"
    assert "検証済み" in p.locator(".verification").inner_text()
    shot(p, "verify-ja")

    p.get_by_role("link", name="English").click()
    p.wait_for_selector("html[lang='en']")
    p.goto(base + "/consents")
    p.wait_for_selector("h1:has-text('My consents')")
    assert p.locator("html").get_attribute("lang") == "en"
    shot(p, "consents-en")
    p.get_by_role("link", name="Consent history", exact=True).click()
    p.wait_for_selector("h1:has-text('My consent history')")
    revoked = p.locator("tr.history-entry", has_text=cid).filter(has_text="Consent revoked")
    assert "Verified (checkpoint of size" in revoked.inner_text()
    shot(p, "consent-history-en")


def test_parent_acts_for_a_child_approves_their_request_and_switches_back(
    page: tuple[Any, str], world: World
) -> None:
    """Issue 16: "acting for …" in a real browser; the child's consent history names the parent."""
    from datetime import timedelta

    from consent.mandates import MandateRegistration
    from tests.consent.consent_factories import BOB

    registration = MandateRegistration.model_validate(
        {
            "representative": BOB,
            "represented": ALICE,
            "kind": "parent",
            "purposes": ["*"],
            "valid_from": (world.now - timedelta(hours=1)).isoformat(),
            "valid_until": (world.now + timedelta(days=365)).isoformat(),
            "basis": "household record",
        }
    )
    mid = world.consent.mandates().register(registration, by="op", now=world.now).id
    p, base = page
    sign_in(p, base, "佐藤 太郎")  # Bob, the parent
    p.wait_for_selector("h1:has-text('わたしの同意')")
    p.get_by_role("link", name="代理").click()
    p.wait_for_selector("h1:has-text('代理（委任・法定代理）')")
    shot(p, "mandates-ja")
    p.locator(f"li[data-mandate='{mid}']").get_by_role(
        "button", name="この人の代理として操作する"
    ).click()
    p.wait_for_selector(f".acting-banner[data-acting-for='{mid}']")
    assert "山田 花子 さんの代理として操作中です。" in p.locator(".acting-banner").inner_text()
    rid = world.alice_request.id
    p.locator(f"#request-{rid}").get_by_role("button", name="承認する").click()
    p.wait_for_selector(".flash")
    shot(p, "acting-for-approved")
    p.locator(".acting-banner").get_by_role("button", name="代理をやめる").click()
    p.wait_for_selector(".flash")
    assert p.locator(".acting-banner").count() == 0
    granted = [c for c in world.consent.list_consents(ALICE, now=world.now) if c.request_id == rid]
    [event] = world.consent.history(ALICE, granted[0].id, now=world.now)
    assert event.actor == f"{BOB} for {ALICE} (mandate {mid})"


def test_auditor_finds_an_exchange_and_verifies_its_proof(
    page: tuple[Any, str], world: World
) -> None:
    p, base = page
    sign_in(p, base, "監査人")
    p.wait_for_selector("h1:has-text('ログ検索')")
    p.get_by_label("本人（仮名）").fill("ps-alice")
    p.get_by_label("結果").select_option("deny")
    p.get_by_role("button", name="検索").click()
    p.wait_for_selector("#results-h")
    shot(p, "auditor-search")
    links = p.locator("a.entry-link")
    assert links.count() == 1
    assert NODE in links.first.inner_text()
    links.first.click()
    p.wait_for_selector(".verification")
    assert p.locator(".verification").get_attribute("data-outcome") == "ok"
    assert p.locator("ol.proof li").count() >= 1
    shot(p, "auditor-entry")
    p.get_by_role("link", name="チェックポイント履歴").click()
    p.wait_for_selector("td.consistency")
    assert "整合" in p.locator("td.consistency").first.inner_text()
    shot(p, "auditor-checkpoints")
    p.get_by_role("link", name="グラフ").click()
    p.wait_for_selector("figure.chart svg")
    shot(p, "auditor-chart")


@pytest.fixture
def federation(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    yield from running_federation(tmp_path, db_url)


@pytest.mark.integration
@pytest.mark.slow
def test_citizen_runs_an_address_change_and_watches_it_finish(
    federation: Federation, chromium: Any, tmp_path: Path
) -> None:
    """The portal, the one-stop client and the runner live on the federation's event loop (the
    client's connections belong to one loop), served by a real uvicorn on 127.0.0.1."""
    fed = federation
    citizen = fed.citizens_in(["resident-registry", "water", "electricity", "gas"])[0]
    issuer = DevIssuer.load_or_create(tmp_path, issuer="onceonly-dev", audience="onceonly")
    log_engine = make_engine(f"sqlite:///{tmp_path / 'portal-log.sqlite'}")
    upgrade(log_engine)
    log = TransparencyLog(log_engine, log_id="n", signer=NoteSigner.generate("onceonly.test/n"))
    one_stop = fed.client()
    portal = build_portal(
        Settings(portal_secret=SecretStr("y" * 32), data_dir=tmp_path),
        consent=LocalConsent(fed.consents),
        logs=local_logs({"n": log}, lambda p: {p.subject}),
        issuer=issuer,
        verifier=issuer.verifier(),
        demo_citizens=[(citizen, "山田 花子")],
        procedures=LocalDesk(fed.service(one_stop)),
    )
    app = Starlette(routes=[Mount("/portal", app=portal)])
    stop = asyncio.Event()
    runner_task = asyncio.run_coroutine_threadsafe(
        fed.runner(one_stop).run_forever(stop, idle_s=0.1), fed.loop
    )
    try:
        with serve(app, loop=fed.loop) as base:
            p = chromium.new_page()
            p.goto(base + "/portal/signin")
            p.get_by_label("山田 花子").check()
            p.get_by_role("button", name="ログイン").click()
            p.get_by_role("link", name="住所変更").click()
            p.get_by_label("新しい住所").fill(NEW_ADDRESS)
            p.get_by_label("転居日").fill(utc_now().date().isoformat())
            shot(p, "procedure-start")
            p.get_by_role("button", name="確認へ進む").click()
            p.wait_for_selector("#procedure-status[data-status='previewed']")
            p.locator("#c-electricity-a").check()
            p.locator("#c-gas-a").check()
            shot(p, "procedure-preview")
            p.get_by_role("button", name="この内容で届け出る").click()
            # The status page refreshes itself (meta refresh) until every step is final.
            p.wait_for_selector("#procedure-status[data-status='done']", timeout=60_000)
            assert p.locator("#step-resident-registry").get_attribute("data-state") == "done"
            assert p.locator("#step-gas").get_attribute("data-state") == "done"
            shot(p, "procedure-done")
    finally:
        fed.loop.call_soon_threadsafe(stop.set)
        runner_task.result(timeout=10)
        asyncio.run_coroutine_threadsafe(one_stop.aclose(), fed.loop).result(timeout=10)
        log_engine.dispose()
