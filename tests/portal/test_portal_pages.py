"""Fast portal tests over ASGI (httpx.ASGITransport): pages, security headers, CSRF, isolation,
language, verification."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text
from typer.testing import CliRunner

from audit.log import EntryQuery
from consent.model import ConsentStatus
from onceonly import cli
from portal.app import CSP
from portal.i18n import format_datetime
from tests.consent.consent_factories import ALICE, BOB
from tests.portal.portal_client import PortalClient
from tests.portal.portal_world import NODE, World, exchange_event

Scenario = Callable[[PortalClient], Awaitable[None]]
POLICE = "JP/GOV/132098/police-liaison"
COVERT = "JP/GOV/132098/covert-unit"
STATUTE = "statute:jp-criminal-procedure-code/art197-2"


def run(world: World, scenario: Scenario) -> None:
    async def main() -> None:
        async with PortalClient(world) as client:
            await scenario(client)

    asyncio.run(main())


def entry_index(world: World, subject: str) -> int:
    for entry in world.log.search(EntryQuery()).entries:
        if entry.record.get("subject") == subject and entry.record.get("kind") == "response":
            return entry.index
    raise AssertionError(f"no entry for {subject}")


def test_sign_in_page_is_japanese_by_default_with_strict_security_headers(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        r = await c.get("/signin")
        assert r.status_code == 200
        assert '<html lang="ja">' in r.text
        assert "ログイン" in r.text
        assert "山田 花子" in r.text
        assert r.headers["content-security-policy"] == CSP
        assert "default-src 'self'; script-src 'self'; style-src 'self'" in CSP
        assert "frame-ancestors 'none'; form-action 'self'" in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "Secure" in cookie
        assert "SameSite=lax" in cookie
        assert "Path=/portal" in cookie
        # Every URL is relative to the mount point.
        assert 'href="/portal/static/portal.css"' in r.text
        css = await c.get("/static/portal.css")
        assert css.status_code == 200
        assert "text/css" in css.headers["content-type"]

    run(world, scenario)


def test_anonymous_visitor_is_sent_to_sign_in(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        for path in ("/consents", "/access", "/auditor", "/auditor/checkpoints"):
            r = await c.get(path)
            assert r.status_code == 303
            assert r.headers["location"].startswith("/portal/signin")

    run(world, scenario)


def test_post_without_or_with_wrong_csrf_token_is_refused(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.get("/signin")
        r = await c.post("/signin", {"who": ALICE}, csrf=False)
        assert r.status_code == 403
        await c.sign_in(ALICE)
        cid = world.alice_consent.id
        r = await c.post(f"/consents/{cid}/revoke", {"csrf": "x" * 43})
        assert r.status_code == 403
        r = await c.post(f"/consents/{cid}/pause", csrf=False)
        assert r.status_code == 403
        assert world.consent.get_consent(ALICE, cid, now=world.now).status is ConsentStatus.ACTIVE

    run(world, scenario)


def test_csrf_token_of_another_session_is_refused(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        async with PortalClient(world) as attacker:
            await attacker.get("/signin")
            await c.sign_in(ALICE)
            cid = world.alice_consent.id
            r = await c.post(f"/consents/{cid}/revoke", {"csrf": attacker.csrf})
            assert r.status_code == 403

    run(world, scenario)


def test_tampered_session_cookie_is_ignored(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        value = c.http.cookies.get("oo_portal_session")
        assert value
        body, mac = value.split(".")
        c.http.cookies.clear()
        c.http.cookies.set(
            "oo_portal_session",
            body + "." + mac[:-1] + ("0" if mac[-1] != "0" else "1"),
            domain="portal.test",
            path="/portal",
        )
        r = await c.get("/consents")
        assert r.status_code == 303

    run(world, scenario)


def test_citizen_sees_consents_pending_request_and_revokes_after_confirmation(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/consents")
        assert r.status_code == 200
        assert "ガス契約の住所変更のため" in r.text
        assert "JP/COM/0100001/gas-billing" in r.text
        assert "address, postal_code" in r.text
        assert f'id="request-{world.alice_request.id}"' in r.text
        assert world.bob_consent.id not in r.text
        cid = world.alice_consent.id
        confirm = await c.get(f"/consents/{cid}/revoke")
        assert confirm.status_code == 200
        assert "撤回しますか" in confirm.text
        r = await c.post(f"/consents/{cid}/revoke")
        assert r.status_code == 303
        page = await c.get(r.headers["location"].removeprefix("/portal"))
        assert "同意を撤回しました" in page.text
        assert re.search(rf'id="consent-{cid}" data-status="revoked"', page.text)
        assert world.consent.get_consent(ALICE, cid, now=world.now).status is ConsentStatus.REVOKED
        again = await c.get(f"/consents/{cid}/revoke")
        assert again.status_code == 409

    run(world, scenario)


def test_citizen_pauses_resumes_and_answers_requests(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        cid = world.alice_second.id
        assert (await c.post(f"/consents/{cid}/pause")).status_code == 303
        assert world.consent.get_consent(ALICE, cid, now=world.now).status is ConsentStatus.PAUSED
        assert (await c.post(f"/consents/{cid}/pause")).status_code == 409
        assert (await c.post(f"/consents/{cid}/resume")).status_code == 303
        assert world.consent.get_consent(ALICE, cid, now=world.now).status is ConsentStatus.ACTIVE
        rid = world.alice_request.id
        assert (await c.post(f"/requests/{rid}/decline")).status_code == 303
        assert (await c.post(f"/requests/{rid}/approve")).status_code == 409
        assert (await c.post(f"/requests/{rid}/bogus")).status_code == 404
        page = await c.get("/consents")
        assert f'id="request-{rid}"' not in page.text

    run(world, scenario)


def test_one_citizen_cannot_reach_another_citizens_consents(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(BOB)
        cid = world.alice_consent.id
        assert (await c.get(f"/consents/{cid}/revoke")).status_code == 404
        assert (await c.get(f"/consents/{cid}/receipt")).status_code == 404
        for verb in ("pause", "resume", "revoke"):
            assert (await c.post(f"/consents/{cid}/{verb}")).status_code == 404
        rid = world.alice_request.id
        assert (await c.post(f"/requests/{rid}/approve")).status_code == 404
        page = await c.get("/consents")
        assert cid not in page.text
        assert world.bob_consent.id in page.text
        assert world.consent.get_consent(ALICE, cid, now=world.now).status is ConsentStatus.ACTIVE

    run(world, scenario)


def test_receipt_page_allows_only_its_own_inline_style(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get(f"/consents/{world.alice_consent.id}/receipt")
        assert r.status_code == 200
        assert world.alice_consent.id in r.text
        csp = r.headers["content-security-policy"]
        assert re.search(r"style-src 'self' 'sha256-[A-Za-z0-9+/=]+'", csp)
        assert "unsafe-inline" not in csp

    run(world, scenario)


def test_who_accessed_my_data_shows_only_own_entries_and_filters(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/access")
        assert r.status_code == 200
        assert "JP/GOV/132098/tax" in r.text
        assert "JP/GOV/132098/water-bureau" in r.text
        assert "法令: 地方税法第294条" in r.text
        assert f"同意: {world.alice_second.id}" in r.text  # the private node's log, by consent
        assert "secret-org" not in r.text  # Bob's exchange
        denied = await c.get("/access", params={"decision": "deny"})
        assert denied.text.count('data-decision="deny"') == 1
        assert 'data-decision="allow"' not in denied.text
        water = await c.get("/access", params={"org": "JP/GOV/132098/water-bureau"})
        assert water.text.count('class="entry"') == 2
        assert (await c.get("/access", params={"decision": "maybe"})).status_code == 400

    run(world, scenario)


def test_the_access_page_proves_each_nodes_record_complete(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/access")
        assert f'data-node="{NODE}" data-status="ok"' in r.text
        assert 'data-status="failed"' not in r.text
        assert "までのあなたに関する記録がすべて表示されていることを検証しました" in r.text
        english = await c.get("/access", params={"lang": "en"})
        assert re.search(r"complete up to checkpoint \d+, verified", english.text)

    run(world, scenario)


def test_a_downloaded_record_verifies_offline_with_the_cli_and_a_trimmed_one_does_not(
    world: World, tmp_path: Path
) -> None:
    files: dict[str, bytes] = {}

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/access/record", params={"node": NODE})
        assert r.status_code == 200
        assert r.headers["content-disposition"].startswith("attachment;")
        files["record"] = r.content

    run(world, scenario)
    record = json.loads(files["record"])
    assert record["accesses"]
    proven = {p["subject"] for p in record["completeness"]["proofs"]}
    assert "ps-bob" not in proven
    assert {a["entry"]["subject"] for a in record["accesses"]} <= proven
    whole, trimmed = tmp_path / "record.json", tmp_path / "trimmed.json"
    whole.write_bytes(files["record"])
    trimmed.write_text(json.dumps(record | {"accesses": record["accesses"][1:]}))
    key = world.log.vkey()
    ok = CliRunner().invoke(cli.app, ["audit", "verify-record", "--key", key, str(whole)])
    assert ok.exit_code == 0, ok.output
    assert "verified: complete up to checkpoint" in ok.output
    bad = CliRunner().invoke(cli.app, ["audit", "verify-record", "--key", key, str(trimmed)])
    assert bad.exit_code == 1
    assert "NOT verified" in bad.output


def test_a_record_with_a_row_deleted_is_not_proven_complete(world: World) -> None:
    world.log.sign_checkpoint(world.now)  # the map commits to Alice's entries
    own = entry_index(world, "ps-alice")
    with world.log._engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE idx = :i"), {"i": own})

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/access")
        assert f'data-node="{NODE}" data-status="failed"' in r.text
        assert "記録がすべて表示されていることを確認できませんでした" in r.text

    run(world, scenario)


def test_verify_says_verified_for_own_entry_and_not_found_for_another_citizens(
    world: World,
) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        own = entry_index(world, "ps-alice")
        r = await c.post("/access/verify", {"node": NODE, "index": str(own)})
        assert r.status_code == 200
        assert 'data-outcome="ok"' in r.text
        assert "検証済み" in r.text
        bobs = entry_index(world, "ps-bob")
        assert (
            await c.post("/access/verify", {"node": NODE, "index": str(bobs)})
        ).status_code == 404
        assert (await c.post("/access/verify", {"node": NODE, "index": "999"})).status_code == 404
        assert (await c.post("/access/verify", {"node": "JP/X/1", "index": "0"})).status_code == 404
        assert (await c.post("/access/verify", {"node": NODE, "index": "-1"})).status_code == 400

    run(world, scenario)


def test_entry_newer_than_the_latest_checkpoint_is_reported_pending(world: World) -> None:
    from tests.portal.portal_world import exchange_event

    index = world.log.append(exchange_event(world.now, "ps-alice"))

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.post("/access/verify", {"node": NODE, "index": str(index)})
        assert 'data-outcome="pending"' in r.text

    run(world, scenario)


def test_language_switch_to_english_is_remembered(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/consents", params={"lang": "en"})
        assert '<html lang="en">' in r.text
        assert "My consents" in r.text
        assert "To update the address on your gas contract" in r.text
        assert "oo_portal_lang=en" in r.headers["set-cookie"]
        later = await c.get("/access")
        assert '<html lang="en">' in later.text
        assert "Who accessed my data" in later.text
        assert "Law: 地方税法第294条" in later.text
        back = await c.get("/access", params={"lang": "ja"})
        assert '<html lang="ja">' in back.text

    run(world, scenario)


def test_dates_are_written_japanese_style_in_japanese(world: World) -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 11, 23, 5, 5, tzinfo=UTC)
    assert format_datetime(when, "ja") == "2026年11月23日 14:05"
    assert format_datetime(when, "en") == "23 Nov 2026 14:05 JST"


def test_citizen_may_not_open_auditor_pages(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        for path in ("/auditor", "/auditor/chart", f"/auditor/export?node={NODE}"):
            assert (await c.get(path)).status_code == 403

    run(world, scenario)


def test_auditor_searches_opens_entry_exports_and_sees_history_and_chart(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in("auditor")
        page = await c.get("/auditor")
        assert page.status_code == 200
        assert "ログ検索" in page.text
        r = await c.get(
            "/auditor", params={"subject": "ps-bob", "decision": "allow", "search": "1"}
        )
        assert "secret-org" in r.text
        assert "JP/GOV/132098/water-bureau" not in r.text
        link = re.search(r'class="entry-link" href="/portal([^"]+)"', r.text)
        assert link
        entry = await c.get(link.group(1).replace("&amp;", "&"))
        assert entry.status_code == 200
        assert 'data-outcome="ok"' in entry.text
        assert "包含証明" in entry.text
        bad = await c.get("/auditor", params={"since": "yesterday", "search": "1"})
        assert bad.status_code == 200
        assert 'role="alert"' in bad.text
        export = await c.get("/auditor/export", params={"node": NODE, "start": "1", "end": "3"})
        assert export.status_code == 200
        lines = export.text.strip().split("\n")
        assert [json.loads(line)["index"] for line in lines] == [1, 2]
        assert "attachment" in export.headers["content-disposition"]
        history = await c.get("/auditor/checkpoints", params={"node": NODE})
        assert history.text.count('<span class="ok">整合</span>') == 1
        assert "（最初）" in history.text
        chart = await c.get("/auditor/chart")
        assert "<svg" in chart.text
        assert 'class="refused"' in chart.text
        assert "secret-org" in chart.text
        assert (
            await c.get("/auditor/entry", params={"node": NODE, "index": "99"})
        ).status_code == 404
        assert (
            await c.get("/auditor/export", params={"node": NODE, "start": "x"})
        ).status_code == 400

    run(world, scenario)


def test_html_in_consumer_supplied_text_is_escaped(world: World) -> None:
    from datetime import timedelta

    from exchange.identifiers import ClientId
    from tests.consent.consent_factories import request_input

    terms = request_input(
        subject=ALICE,
        purpose={"code": "x", "text_ja": "<script>alert(1)</script>", "text_en": "x"},
        valid_from=(world.now - timedelta(hours=1)).isoformat(),
        valid_until=(world.now + timedelta(days=1)).isoformat(),
    )
    world.consent.create_request(ClientId.parse(terms.client), terms, now=world.now)

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/consents")
        assert "<script>alert(1)</script>" not in r.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text

    run(world, scenario)


def test_language_switch_on_a_page_answering_a_post_links_to_a_page_that_exists(
    world: World,
) -> None:
    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        own = entry_index(world, "ps-alice")
        r = await c.post("/access/verify", {"node": NODE, "index": str(own)})
        link = re.search(r'href="/portal([^"]*)"[^>]*class="lang-switch"', r.text)
        assert link
        target = await c.get(link.group(1).replace("&amp;", "&"))
        assert target.status_code == 303  # home, which sends the citizen to their consents
        assert "oo_portal_lang=en" in target.headers["set-cookie"]

    run(world, scenario)


EVIL = {"host": "evil.example"}
"""A forged Host header: nothing the portal sends back may point there."""


def test_a_forged_host_header_never_comes_back_in_a_redirect_or_a_link(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        home = await c.get("/", headers=EVIL)
        assert home.status_code == 303
        assert home.headers["location"] == "/portal/signin"
        slash = await c.get("/auditor/", headers=EVIL)  # the framework's trailing-slash redirect
        assert slash.status_code in (307, 308)
        assert slash.headers["location"] == "/portal/auditor"
        signin = await c.get("/signin", headers=EVIL)
        assert signin.status_code == 200
        assert "evil.example" not in signin.text
        await c.sign_in(ALICE)
        for path in ("/consents", "/access", "/procedures"):
            page = await c.get(path, headers=EVIL)
            assert "evil.example" not in page.text, path
            assert "evil.example" not in page.headers.get("location", ""), path
        cid = world.alice_consent.id
        await c.get(f"/consents/{cid}/revoke", headers=EVIL)
        revoked = await c.http.post(
            f"/portal/consents/{cid}/revoke", data={"csrf": c.csrf}, headers=EVIL
        )
        assert revoked.status_code == 303
        assert revoked.headers["location"].startswith("/portal/")

    run(world, scenario)


def test_integers_beyond_64_bits_in_auditor_pages_are_400_pages_never_500(world: World) -> None:
    huge = str(2**64)

    async def scenario(c: PortalClient) -> None:
        await c.sign_in("auditor")
        for path, params in (
            ("/auditor/entry", {"node": NODE, "index": huge}),
            ("/auditor/export", {"node": NODE, "start": huge}),
            ("/auditor/export", {"node": NODE, "end": huge}),
        ):
            r = await c.get(path, params=params)
            assert r.status_code == 400, (path, params, r.status_code)

    async def citizen(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.post("/access/verify", {"node": NODE, "index": huge})
        assert r.status_code == 400

    run(world, scenario)
    run(world, citizen)


def test_a_restricted_access_is_shown_once_released_and_the_record_still_proves_complete(
    world: World, tmp_path: Path
) -> None:
    """Issue #15 item 3: one exchange under a restricted statute whose time has come, one whose
    time has not; the citizen sees the first as the access it was, the record proves complete,
    and the downloaded record verifies offline."""
    past, future = world.now - timedelta(days=2), world.now + timedelta(days=30)
    due = replace(
        exchange_event(world.now - timedelta(days=40), "ps-alice", client=POLICE, basis=STATUTE),
        restricted_until=past,
    )
    hidden = replace(
        exchange_event(world.now - timedelta(days=1), "ps-alice", client=COVERT, basis=STATUTE),
        restricted_until=future,
    )
    first = world.log.append_many([due, hidden])[0]
    files: dict[str, bytes] = {}

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        r = await c.get("/access", params={"lang": "en"})
        assert f'data-node="{NODE}" data-status="ok"' in r.text
        assert POLICE in r.text
        assert COVERT not in r.text
        assert f"Kept from your view under the law until {past:%Y-%m-%d}" in r.text
        assert "Restricted record released" not in r.text  # the release is not a row of its own
        verified = await c.post("/access/verify", {"node": NODE, "index": str(first)})
        assert 'data-outcome="ok"' in verified.text
        hidden_one = await c.post("/access/verify", {"node": NODE, "index": str(first + 1)})
        assert hidden_one.status_code == 404
        files["record"] = (await c.get("/access/record", params={"node": NODE})).content

    run(world, scenario)
    path = tmp_path / "record.json"
    path.write_bytes(files["record"])
    ok = CliRunner().invoke(
        cli.app, ["audit", "verify-record", "--key", world.log.vkey(), str(path)]
    )
    assert ok.exit_code == 0, ok.output


def test_each_access_under_usage_terms_shows_deleted_on_or_overdue(world: World) -> None:
    """Issue #17 item 4: next to the access, what the recipient did with the data — from the
    consumer node's obligation entries about the same message (ja and en)."""
    deleted_at = world.now - timedelta(days=3)
    kept = exchange_event(world.now - timedelta(days=400), "ps-alice", message_id="m-kept")
    gone = exchange_event(world.now - timedelta(days=20), "ps-alice", message_id="m-gone")
    overdue = replace(
        kept,
        time=world.now - timedelta(days=30),
        kind="obligation.overdue",
        decision="error",
        extra={"delete_by": "2027-01-05"},
    )
    late = replace(gone, time=deleted_at, kind="obligation.deleted", decision="info")
    world.log.append_many([kept, gone, overdue, late])

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        ja = await c.get("/access")
        assert "期限（2027-01-05）を過ぎても削除されていません" in ja.text
        assert f"{deleted_at:%Y-%m-%d} に削除されました" in ja.text
        en = await c.get("/access", params={"lang": "en"})
        assert "overdue: not deleted by 2027-01-05" in en.text
        assert f"deleted on {deleted_at:%Y-%m-%d}" in en.text
        assert en.text.count('class="obligation-overdue"') == 1
        assert en.text.count('class="obligation-deleted"') == 1
        assert "Deletion overdue" in en.text  # the obligation entry is in the record itself

    run(world, scenario)
