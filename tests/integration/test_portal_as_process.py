"""``onceonly portal`` as its own process against a real central server and node (issue 13): the
portal reaches the consent service and the node only over HTTP and opens no database.

A citizen signs in (development issuer), sees who accessed their data with a verified proof,
approves and then revokes a consent; an auditor searches the node's log, verifies an entry,
checks the checkpoint history and exports. A portal that pins the wrong log key, or a node that
alters an entry, shows "bad checkpoint" or "failed", never "verified".
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from audit.checkpoint import NoteSigner, NoteVerifier
from consent.artefact import ConsentReceiptVerifier
from consent.model import Consent, ConsentStatus
from exchange.db import make_engine
from exchange.identifiers import ClientId, MemberId
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from onceonly.wiring import consent_service, pseudonym_service, registry_database_url
from portal.app import verify_proven
from portal.ports import Caller, ProvenEntry
from portal.remote import RemoteLog
from tests.consent.consent_factories import request_input
from tests.integration.processes import Cluster, Proc, free_port, provisioned_cluster, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MACHIDA = MemberId.parse("JP/GOV/132098")
TAX = "JP/GOV/132098/municipal-tax"
ADDRESS = "JP/GOV/132098/resident-registry/address/v1"
SECRET = "portal-process-secret-0123456789"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_HISTORY_ROW = re.compile(r'<tr class="history-entry" data-index="(\d+)" data-outcome="(\w+)">')
_VERIFY_FORM = re.compile(
    r'name="node" value="([^"]+)">\s*<input type="hidden" name="index" value="(\d+)"'
)


@dataclass
class World:
    cluster: Cluster
    settings: Settings
    portal: Proc
    citizen: str
    request_id: str


class Browser:
    """httpx with a hand-kept cookie (the portal's cookies are ``Secure``; Chromium keeps them on
    http://127.0.0.1, httpx's jar does not) and the last page's CSRF token."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self._keep(self.http.get(path, params=params, headers=self._headers()))

    def post(self, path: str, **form: str) -> httpx.Response:
        form.setdefault("csrf", self.csrf)
        headers = self._headers() | {"Origin": str(self.http.base_url).rstrip("/")}
        return self._keep(self.http.post(path, data=form, headers=headers))

    def sign_in(self, who: str) -> None:
        self.get("/signin")
        r = self.post("/signin", who=who)
        assert r.status_code == 303, r.text
        self.get("/")


def _exchange(node: Proc, key: str, subject: str) -> None:
    headers = {
        "X-Road-Client": TAX,
        "X-OnceOnly-Api-Key": key,
        "X-OnceOnly-Purpose": "taxation",
        "X-OnceOnly-Subject": subject,
    }
    r = httpx.get(f"{node.url}/r1/{ADDRESS}", headers=headers, timeout=20)
    assert r.status_code == 200, r.text


def _taxpayer(settings: Settings) -> str:
    engine = make_engine(registry_database_url(settings, "municipal-tax"))
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT taxpayer_id FROM taxpayers ORDER BY taxpayer_id LIMIT 1")
        ).scalar_one()
    engine.dispose()
    return str(value)


def _log_key(data_dir: Path, member: str) -> str:
    """What the operator hands the portal: ``onceonly audit key MEMBER``."""
    out = subprocess.run(
        [sys.executable, "-m", "onceonly", "audit", "key", member, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def _portal_config(
    path: Path, *, settings: Settings, node: Proc, key: str, consent_key: str, citizen: str
) -> None:
    path.write_text(
        f'consent_url = "{settings.central_url}"\n'
        f'consent_log_key = "{consent_key}"\n'
        f'dev_issuer_key_file = "{settings.data_dir / "dev-issuer.key"}"\n'
        "allow_dev_issuer = true\n"
        f'demo_citizens = [{{ subject = "{citizen}", name = "町田 一郎" }}]\n'
        "[[nodes]]\n"
        f'member = "{MACHIDA}"\n'
        f'url = "{node.url}"\n'
        f'log_key = "{key}"\n'
    )


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    data = tmp_path / "data"
    cluster, settings, api_keys = provisioned_cluster(
        data,
        (MACHIDA,),
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=20,
        # Translator mode (the default): the node finds the citizen's entries recorded under its
        # agencies' codes by asking the translator with the citizen's token (docs/pseudonyms.md).
    )
    gen = running(cluster)
    c = next(gen)
    for p in c.procs.values():
        p.start()
    node = c.procs[str(MACHIDA)]
    taxpayer = _taxpayer(settings)
    _exchange(node, api_keys[TAX], taxpayer)
    pseudonyms = pseudonym_service(settings)
    citizen = pseudonyms.translate(taxpayer, from_agency=TAX, to_agency=CITIZEN_AGENCY)
    # A company asks the citizen for consent (set up beside the portal, as a consumer would).
    now = datetime.now(UTC)
    terms = request_input(
        subject=citizen,
        valid_from=(now - timedelta(hours=1)).isoformat(),
        valid_until=(now + timedelta(days=30)).isoformat(),
    )
    consents = consent_service(settings)
    request = consents.create_request(ClientId.parse(terms.client), terms, now=now)
    _dispose_engines()  # the test's own pools; the portal and the services have theirs
    config = tmp_path / "portal.toml"
    _portal_config(
        config,
        settings=settings,
        node=node,
        key=_log_key(data, str(MACHIDA)),
        consent_key=_log_key(data, "consent-service"),
        citizen=citizen,
    )
    port = free_port()
    portal = Proc(
        "portal",
        ["portal", "--config", str(config)],
        {
            "ONCEONLY_PORTAL_SECRET": SECRET,
            "ONCEONLY_PORTAL_PUBLIC_ORIGIN": f"http://127.0.0.1:{port}",
        },
        port,
        tmp_path / "processes.log",
    )
    c.procs["portal"] = portal.start()
    yield World(c, settings, portal, citizen, request.id)
    gen.close()


def _dispose_engines() -> None:
    """Close the pools the test itself opened through the composition root (an open psycopg
    connection collected later is a ResourceWarning, an error under pytest)."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, Engine):
            obj.dispose()


def _consents_of(world: World) -> list[Consent]:
    """What the consent service itself says (its citizen API, with the citizen's own token)."""
    issuer = DevIssuer.load(
        world.settings.data_dir / "dev-issuer.key", issuer="onceonly-dev", audience="onceonly"
    )
    r = httpx.get(
        f"{world.settings.central_url}/consent/v1/consents",
        headers={"Authorization": f"Bearer {issuer.issue(world.citizen)}"},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    return [Consent.model_validate(c) for c in r.json()]


def _open_files_under(pid: int, root: Path) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(root.resolve())):
            found.append(target)
    return found


def test_citizen_and_auditor_use_the_portal_process_over_http_only(world: World) -> None:
    with Browser(world.portal.url) as b:
        _citizen_and_auditor(world, b)


def _citizen_and_auditor(world: World, b: Browser) -> None:
    b.sign_in(world.citizen)

    access = b.get("/access")
    assert access.status_code == 200, access.text
    assert f'data-node="{MACHIDA}" data-status="ok"' in access.text  # proven complete over HTTP
    forms = _VERIFY_FORM.findall(access.text)
    assert forms, access.text
    node, index = forms[0]
    assert node == str(MACHIDA)
    verified = b.post("/access/verify", node=node, index=index)
    assert verified.status_code == 200, verified.text
    assert 'data-outcome="ok"' in verified.text

    page = b.get("/consents")
    assert world.request_id in page.text
    approved = b.post(f"/requests/{world.request_id}/approve")
    assert approved.status_code == 303, approved.text
    (consent,) = _consents_of(world)
    assert consent.status is ConsentStatus.ACTIVE
    assert b.get(f"/consents/{consent.id}/revoke").status_code == 200
    assert b.post(f"/consents/{consent.id}/revoke").status_code == 303
    (after,) = _consents_of(world)
    assert after.status is ConsentStatus.REVOKED
    receipt = b.get(f"/consents/{consent.id}/receipt")
    assert receipt.status_code == 200
    assert consent.id in receipt.text
    # The signed receipt downloads and verifies with the consent service's published key alone.
    signed = b.get(f"/consents/{consent.id}/receipt.jws")
    assert signed.status_code == 200
    assert f"/consents/{consent.id}/receipt.jws" in receipt.text
    jwks = httpx.get(f"{world.settings.central_url}/consent/v1/keys", timeout=20).json()
    document = ConsentReceiptVerifier.from_jwks(jwks).verify(signed.text)
    assert document["iso27560"]["record_id"] == consent.id
    assert document["iso27560"]["events"][-1]["event_state"] == "consent_withdrawn"
    # The consent history: the grant and the revocation from the consent log, each verified
    # by the portal against the consent log key it pins.
    history = b.get("/consents/history")
    assert history.status_code == 200, history.text
    rows = _HISTORY_ROW.findall(history.text)
    assert len(rows) >= 2, history.text
    assert {outcome for _, outcome in rows} == {"ok"}
    assert "同意の付与" in history.text
    assert "同意の撤回" in history.text

    # A POST from another origin is refused even with the right CSRF token.
    foreign = b.http.post(
        "/signout",
        data={"csrf": b.csrf},
        headers=b._headers() | {"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403

    b.post("/signout")
    b.sign_in("auditor")
    search = b.get("/auditor", node=str(MACHIDA), search="1")
    assert search.status_code == 200, search.text
    assert f"index={index}" in search.text.replace("&amp;", "&")
    entry = b.get("/auditor/entry", node=str(MACHIDA), index=index)
    assert entry.status_code == 200, entry.text
    assert 'data-outcome="ok"' in entry.text
    history = b.get("/auditor/checkpoints", node=str(MACHIDA))
    assert history.status_code == 200
    assert 'class="bad"' not in history.text
    export = b.get("/auditor/export", node=str(MACHIDA))
    assert export.status_code == 200
    assert len(export.text.splitlines()) >= 1
    assert b.get("/auditor/chart").status_code == 200
    assert b.get("/auditor/entry", node=str(MACHIDA), index="99999").status_code == 404

    assert world.portal.popen is not None
    assert _open_files_under(world.portal.popen.pid, world.settings.data_dir) == []

    # The node goes down: the search page still answers and says which log is missing; a page
    # that needs that node is a 502, not a 500.
    world.cluster.procs[str(MACHIDA)].stop()
    down = b.get("/auditor", search="1")
    assert down.status_code == 200
    assert (
        f'role="status">次のノードに接続できないため、その記録は表示されていません: {MACHIDA}'
        in (down.text)
    )
    assert b.get("/auditor/entry", node=str(MACHIDA), index=index).status_code == 502
    b.post("/signout")
    b.sign_in(world.citizen)
    mine = b.get("/access")
    assert mine.status_code == 200
    assert f"その記録は表示されていません: {MACHIDA}" in mine.text


def test_wrong_pinned_key_or_altered_entry_is_never_verified(world: World) -> None:
    issuer = DevIssuer.load(
        world.settings.data_dir / "dev-issuer.key", issuer="onceonly-dev", audience="onceonly"
    )
    caller = Caller(
        issuer.verifier().verify(issuer.issue("auditor", roles=("auditor",))),
        issuer.issue("auditor", roles=("auditor",)),
    )
    node = world.cluster.procs[str(MACHIDA)]
    key = _log_key(world.settings.data_dir, str(MACHIDA))
    with httpx.Client(timeout=20) as http:
        pinned = RemoteLog(http, node.url, NoteSigner.generate("onceonly.example/x").verifier())
        right = RemoteLog(http, node.url, NoteVerifier.from_vkey(key))
        entry = right.entry(caller, 0)
        assert verify_proven(entry, right.verifier).outcome == "ok"
        assert verify_proven(pinned.entry(caller, 0), pinned.verifier).outcome == "bad_checkpoint"
        altered = ProvenEntry(
            entry.index,
            entry.data.replace(b'"allow"', b'"deny"').replace(b'"info"', b'"deny"'),
            entry.proof,
            entry.checkpoint,
            entry.checkpoint_time,
        )
        assert altered.data != entry.data
        assert verify_proven(altered, right.verifier).outcome == "failed"


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not at /usr/bin/chromium")
def test_chromium_signs_in_at_the_portal_process_and_verifies(world: World) -> None:
    """Debian's Chromium (never a downloaded browser) against the portal process: the Secure
    session cookie holds on http://127.0.0.1, the citizen approves the request and verifies an
    access, the auditor verifies the same entry."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            p = browser.new_context().new_page()
            p.set_default_timeout(15_000)
            p.goto(world.portal.url + "/signin")
            p.get_by_label("町田 一郎").check()
            p.get_by_role("button", name="ログイン").click()
            p.wait_for_selector("h1:has-text('わたしの同意')")
            p.get_by_role("button", name="承認する").click()
            p.wait_for_selector(".flash")
            assert p.locator("[data-status='active']").count() == 1
            p.get_by_role("link", name="わたしの情報の利用履歴").click()
            p.wait_for_selector("ol.timeline")
            p.locator("li.entry").first.get_by_role("button", name="検証").click()
            p.wait_for_selector(".verification")
            assert p.locator(".verification").get_attribute("data-outcome") == "ok"
            p.get_by_role("button", name="ログアウト").click()
            p.get_by_label("監査人").check()
            p.get_by_role("button", name="ログイン").click()
            p.wait_for_selector("h1:has-text('ログ検索')")
            p.get_by_role("button", name="検索").click()
            p.locator("a.entry-link").first.click()
            p.wait_for_selector(".verification")
            assert p.locator(".verification").get_attribute("data-outcome") == "ok"
        finally:
            browser.close()
