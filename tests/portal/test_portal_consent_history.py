"""The citizen's consent history page (issue 15 item 4): every grant, change and use of their
consents from the consent service's own log, each with its proof checked in the portal against
the pinned consent log key — in process, and over HTTP against the real consent log routes (an
honest service, one that rewrites an entry, and one whose checkpoints another key signed)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.routing import Mount

from audit.api import build_router as build_audit_router
from audit.checkpoint import NoteSigner, NoteVerifier
from consent.api import build_consent_log_router
from exchange.settings import Settings
from exchange.web.problems import install_problem_handlers
from portal import build_portal
from portal.local import LocalConsent, local_logs
from portal.ports import ConsentLog
from portal.remote import RemoteLog
from tests.consent.consent_factories import ALICE, BOB
from tests.portal.portal_client import PortalClient
from tests.portal.portal_world import DEMO_CITIZENS, SECRET, World, subjects_of

with warnings.catch_warnings():
    # Starlette's TestClient warns that it prefers httpx2, which is not a dependency (yet).
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

_ROW = re.compile(r'<tr class="history-entry" data-index="(\d+)" data-outcome="(\w+)">')


def _outcomes(html: str) -> dict[int, str]:
    return {int(i): outcome for i, outcome in _ROW.findall(html)}


def _history(world: World, lang: str = "ja") -> tuple[int, str]:
    async def main() -> tuple[int, str]:
        async with PortalClient(world) as client:
            await client.sign_in(ALICE)
            page = await client.get("/consents/history", params={"lang": lang})
            return page.status_code, page.text

    return asyncio.run(main())


def _with_consent_log(world: World, consent_log: ConsentLog | None, tmp_path: Path) -> World:
    portal = build_portal(
        Settings(portal_secret=SecretStr(SECRET), data_dir=tmp_path),
        consent=LocalConsent(world.consent),
        logs=local_logs(world.logs, subjects_of),
        issuer=world.issuer,
        verifier=world.issuer.verifier(),
        demo_citizens=DEMO_CITIZENS,
        consent_log=consent_log,
    )
    return dataclasses.replace(
        world, app=Starlette(routes=[Mount("/portal", app=portal)]), portal=portal
    )


def _consent_service_app(world: World) -> TestClient:
    """The consent service's log routes as the central server mounts them."""
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(
        build_consent_log_router(
            world.consent, build_audit_router(world.consent_log, world.issuer.verifier())
        )
    )
    return TestClient(app)


def _over_http(
    world: World,
    verifier: NoteVerifier,
    rewrite: Callable[[dict[str, Any]], None] | None = None,
) -> RemoteLog:
    service = _consent_service_app(world)

    def forward(request: httpx.Request) -> httpx.Response:
        answer = service.request(request.method, str(request.url), headers=request.headers)
        body = answer.json()
        if rewrite is not None and request.url.path.endswith("/me/accesses"):
            rewrite(body)
        return httpx.Response(answer.status_code, json=body)

    http = httpx.Client(transport=httpx.MockTransport(forward))
    return RemoteLog(http, "http://central.test/consent/v1/log", verifier)


def test_the_history_shows_the_citizens_consent_events_each_verified(world: World) -> None:
    status, html = _history(world)
    assert status == 200
    outcomes = _outcomes(html)
    assert len(outcomes) == 2  # Alice's two grants; Bob's grant is not hers
    assert set(outcomes.values()) == {"ok"}
    assert "同意の記録" in html
    assert "同意の付与" in html
    assert "検証済み（チェックポイント サイズ 3）" in html
    assert "同意ログ: チェックポイント 3 までのあなたに関する記録がすべて表示されて" in html
    assert world.alice_consent.id in html
    assert world.bob_consent.id not in html
    status, english = _history(world, "en")
    assert "My consent history" in english
    assert "Verified (checkpoint of size 3)" in english
    assert "Consent log: complete up to checkpoint 3, verified" in english


def test_a_change_after_the_last_checkpoint_is_covered_by_the_one_the_page_has_signed(
    world: World,
) -> None:
    world.consent.pause(ALICE, world.alice_consent.id, now=world.now)
    html = _history(world)[1]
    assert sorted(_outcomes(html).values()) == ["ok", "ok", "ok"]
    assert 'data-status="ok"' in html
    assert "同意ログ: チェックポイント 4 までのあなたに関する記録がすべて表示されて" in html
    latest = world.consent_log.latest_checkpoint()
    assert latest is not None
    assert latest.size == 4


def test_a_deleted_consent_log_row_makes_the_history_fail_its_completeness_proof(
    world: World,
) -> None:
    (first, second) = sorted(_outcomes(_history(world)[1]))
    with world.consent_log._engine.begin() as conn:  # the operator edits the database
        conn.execute(
            text("DELETE FROM audit_entries WHERE log_id = :log AND idx = :idx"),
            {"log": world.consent_log.log_id, "idx": first},
        )
    html = _history(world)[1]
    assert 'data-status="failed"' in html
    assert list(_outcomes(html)) == [second]
    assert "記録がすべて表示されていることを確認できませんでした" in html


def test_over_http_the_real_consent_log_routes_verify_against_the_pinned_key(
    world: World, tmp_path: Path
) -> None:
    remote = _over_http(world, world.consent_log.verifier())
    status, html = _history(_with_consent_log(world, remote, tmp_path))
    assert status == 200
    assert list(_outcomes(html).values()) == ["ok", "ok"]


def test_a_consent_log_that_rewrites_an_entry_shows_it_as_failed(
    world: World, tmp_path: Path
) -> None:
    def rewrite(body: dict[str, Any]) -> None:
        body["accesses"][0]["entry"]["purpose"] = "marketing"

    remote = _over_http(world, world.consent_log.verifier(), rewrite)
    html = _history(_with_consent_log(world, remote, tmp_path))[1]
    assert sorted(_outcomes(html).values()) == ["failed", "ok"]
    assert "検証失敗: 記録がチェックポイントと一致しません" in html


def test_checkpoints_signed_by_a_key_the_portal_did_not_pin_are_refused(
    world: World, tmp_path: Path
) -> None:
    other = NoteSigner.generate(world.consent_log.origin).verifier()
    html = _history(_with_consent_log(world, _over_http(world, other), tmp_path))[1]
    assert set(_outcomes(html).values()) == {"bad_checkpoint"}


def test_without_a_consent_log_there_is_no_history_page(world: World, tmp_path: Path) -> None:
    bare = _with_consent_log(world, None, tmp_path)

    async def main() -> None:
        async with PortalClient(bare) as client:
            await client.sign_in(BOB)
            consents = await client.get("/consents")
            assert "/portal/consents/history" not in consents.text
            assert (await client.get("/consents/history")).status_code == 404

    asyncio.run(main())
