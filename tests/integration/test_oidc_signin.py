"""Sign-in at a real OpenID Connect provider (issue 16): the npm package ``oidc-provider`` on
127.0.0.1 (``tests/oidc/provider.mjs``), the central server and Machida's node as processes that
verify its access tokens with its JWKS, and ``onceonly portal`` as a process signing people in
through the provider's own login and consent pages (code flow with PKCE).

A citizen (the provider's account carries the citizen id claim of a seeded citizen) and an
auditor (a role claim the operator maps to ``auditor``) sign in, manage a consent and sign out
(RP-initiated logout); granting a consent after the re-authentication window asks the provider
to authenticate the person again; tokens from another issuer, expired, for another audience,
with another ``alg`` or of another type are refused (and audited by the consent service); a
rotated provider key is picked up without a restart. Skipped, with the reason, where Node.js or
the installed package is missing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit.log import EntryQuery
from consent.model import Consent, ConsentStatus
from exchange.db import make_engine
from exchange.identifiers import ClientId
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from onceonly.wiring import CONSENT_LOG, audit_log, consent_service, database_url, pseudonym_service
from tests.consent.consent_factories import request_input
from tests.integration.processes import Cluster, Proc, free_port, provisioned_cluster, running
from tests.integration.test_portal_as_process import (
    MACHIDA,
    _dispose_engines,
    _exchange,
    _log_key,
    _taxpayer,
)
from tests.oidc.driver import PortalSession
from tests.oidc.provider import Account, Client, Provider, skip_reason, start_provider

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

RESOURCE = "https://api.onceonly.test"
CLIENT_ID = "onceonly-portal"
CLIENT_SECRET = "portal-client-secret-0123456789"
CITIZEN = Account("hanako", "hanako-password-1")
AUDITOR = Account("kansa", "kansa-password-2", {"roles": ["onceonly-auditor"], "name": "監査 一郎"})
SECRET = "portal-oidc-secret-0123456789abc"
ROLE_MAP = '{"onceonly-auditor": "auditor"}'


@dataclass
class OidcWorld:
    cluster: Cluster
    settings: Settings
    provider: Provider
    portal: Proc
    citizen: str
    request_id: str
    start_portal: Callable[..., Proc]

    @property
    def central(self) -> str:
        return self.settings.central_url


def _client_id(index: int) -> str:
    return CLIENT_ID if index == 0 else f"{CLIENT_ID}-{index + 1}"


def _portal_config(
    path: Path,
    *,
    settings: Settings,
    issuer: str,
    origin: str,
    node: Proc,
    key: str,
    client_id: str,
    **extra: Any,
) -> None:
    secret_file = path.with_suffix(".client-secret")
    secret_file.write_text(CLIENT_SECRET + "\n")
    top = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    path.write_text(
        f'consent_url = "{settings.central_url}"\n'
        f'public_origin = "{origin}"\n'
        f'oidc_issuer = "{issuer}"\n'
        f'jwt_audience = "{RESOURCE}"\n'
        'jwt_citizen_claim = "citizen_id"\n'
        'jwt_role_map = { "onceonly-auditor" = "auditor" }\n'
        "jwks_min_refetch_s = 1\n" + top + "[signin]\n"
        f'client_id = "{client_id}"\n'
        f'client_secret_file = "{secret_file}"\n'
        'scopes = ["openid", "profile", "onceonly"]\n'
        f'resource = "{RESOURCE}"\n'
        'id_token_algorithms = ["RS256"]\n'
        "[[nodes]]\n"
        f'member = "{MACHIDA}"\n'
        f'url = "{node.url}"\n'
        f'log_key = "{key}"\n'
    )


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[OidcWorld]:
    issuer = f"http://127.0.0.1:{free_port()}"
    ports = [free_port(), free_port()]  # the portal, and a second one a test may start
    origins = [f"http://127.0.0.1:{p}" for p in ports]
    env = {
        "ONCEONLY_OIDC_ISSUER": issuer,
        "ONCEONLY_JWT_AUDIENCE": RESOURCE,
        "ONCEONLY_JWT_CITIZEN_CLAIM": "citizen_id",
        "ONCEONLY_JWT_ROLE_MAP": ROLE_MAP,
        "ONCEONLY_JWKS_MIN_REFETCH_S": "1",
        "ONCEONLY_ALLOW_DEV_ISSUER": "false",
    }
    data = tmp_path / "data"
    log = tmp_path / "processes.log"
    cluster, settings, api_keys = provisioned_cluster(
        data,
        (MACHIDA,),
        log=log,
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=20,
        env=env,
    )
    taxpayer = _taxpayer(settings)
    # The services the test opens itself are kept until their pools are closed below (a pool
    # collected with a connection open is a ResourceWarning, an error here).
    pseudonyms = pseudonym_service(settings)
    citizen = pseudonyms.translate(
        taxpayer, from_agency="JP/GOV/132098/municipal-tax", to_agency=CITIZEN_AGENCY
    )
    person = Account(CITIZEN.login, CITIZEN.password, {"citizen_id": citizen, "name": "町田 花子"})
    provider = start_provider(
        tmp_path,
        port=int(issuer.rsplit(":", 1)[1]),
        clients=[  # one client per portal (a test may start a second one)
            Client(_client_id(i), CLIENT_SECRET, f"{o}/signin/callback", f"{o}/signin")
            for i, o in enumerate(origins)
        ],
        accounts=[person, AUDITOR],
        resource=RESOURCE,
    )
    gen = running(cluster)
    c = next(gen)
    try:
        for p in c.procs.values():
            p.start()
        node = c.procs[str(MACHIDA)]
        _exchange(node, api_keys["JP/GOV/132098/municipal-tax"], taxpayer)
        now = datetime.now(UTC)
        terms = request_input(
            subject=citizen,
            valid_from=(now - timedelta(hours=1)).isoformat(),
            valid_until=(now + timedelta(days=30)).isoformat(),
        )
        consents = consent_service(settings)
        request = consents.create_request(ClientId.parse(terms.client), terms, now=now)
        _dispose_engines()
        del pseudonyms, consents
        key = _log_key(data, str(MACHIDA))

        def start_portal(index: int = 0, **extra: Any) -> Proc:
            config = tmp_path / f"portal-{index}.toml"
            _portal_config(
                config,
                settings=settings,
                issuer=issuer,
                origin=origins[index],
                node=node,
                key=key,
                client_id=_client_id(index),
                **extra,
            )
            proc = Proc(
                f"portal-{index}",
                ["portal", "--config", str(config)],
                {"ONCEONLY_PORTAL_SECRET": SECRET},
                ports[index],
                log,
            )
            c.procs[proc.name] = proc.start()
            return proc

        yield OidcWorld(c, settings, provider, start_portal(), citizen, request.id, start_portal)
    finally:
        gen.close()
        provider.stop()


def _good_claims(world: OidcWorld, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": world.provider.issuer,
        "sub": CITIZEN.login,
        "aud": RESOURCE,
        "iat": now,
        "exp": now + 300,
        "jti": f"t-{now}-{len(over)}",
        "client_id": CLIENT_ID,
        "citizen_id": world.citizen,
    }
    claims.update(over)
    return claims


def _consents(world: OidcWorld, token: str) -> httpx.Response:
    return httpx.get(
        f"{world.central}/consent/v1/consents",
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )


def _consent_of(world: OidcWorld) -> Consent:
    r = _consents(world, world.provider.sign(_good_claims(world)))
    assert r.status_code == 200, r.text
    (consent,) = [Consent.model_validate(c) for c in r.json()]
    return consent


def test_citizen_and_auditor_sign_in_at_the_provider_manage_a_consent_and_sign_out(
    world: OidcWorld,
) -> None:
    with PortalSession(world.portal.url, world.provider.issuer) as b:
        page = b.get("/signin")
        assert 'id="signin-oidc"' in page.text
        assert "data-dev-issuer" not in page.text  # no development sign-in here
        assert b.post("/signin", who="auditor").status_code == 403

        # A wrong password stays on the provider's page; nobody is signed in at the portal.
        refused = b.sign_in(CITIZEN.login, "not-the-password")
        assert refused.status_code == 401
        assert str(refused.request.url).startswith(world.provider.issuer)

        consents = b.sign_in(CITIZEN.login, CITIZEN.password)
        assert consents.status_code == 200, consents.text
        assert str(consents.request.url) == f"{world.portal.url}/consents"
        assert "町田 花子" in consents.text
        assert world.request_id in consents.text
        assert b.post(f"/requests/{world.request_id}/approve").status_code == 303
        consent = _consent_of(world)
        assert consent.status is ConsentStatus.ACTIVE
        assert b.post(f"/consents/{consent.id}/revoke").status_code == 303
        assert _consent_of(world).status is ConsentStatus.REVOKED
        assert b.get("/access").status_code == 200
        assert b.get("/auditor").status_code == 403  # a citizen is no auditor

        back = b.sign_out()
        assert back.status_code == 200
        assert str(back.request.url) == f"{world.portal.url}/signin"
        assert b.get("/consents").status_code == 303  # signed out

        landed = b.sign_in(AUDITOR.login, AUDITOR.password)
        assert str(landed.request.url) == f"{world.portal.url}/auditor", landed.text
        search = b.get("/auditor", node=str(MACHIDA), search="1")
        assert search.status_code == 200, search.text
        assert "監査 一郎" in search.text
        assert "entry-link" in search.text
        assert b.get("/consents").status_code == 403  # an auditor has no citizen id
        assert b.sign_out().status_code == 200


def test_granting_a_consent_after_the_reauthentication_window_asks_the_provider_again(
    world: OidcWorld,
) -> None:
    portal = world.start_portal(1, reauth_max_age_s=3)
    with PortalSession(portal.url, world.provider.issuer) as b:
        assert b.sign_in(CITIZEN.login, CITIZEN.password).status_code == 200
        time.sleep(3.5)  # the authentication is now older than the window
        asked = b.post(f"/requests/{world.request_id}/approve")
        assert asked.status_code == 200
        assert 'id="reauth"' in asked.text
        assert _consent_of_or_none(world) is None  # nothing granted yet
        start = b.get("/signin/oidc", reauth="1", next="/consents")
        assert "prompt=login" in start.headers["location"]
        assert "max_age=0" in start.headers["location"]
        # The provider asks for the password again although its session is still open.
        login_page = b.idp.get(start.headers["location"], follow_redirects=True)
        assert "<h1>Sign in</h1>" in login_page.text
        back = b.follow(start, CITIZEN.login, CITIZEN.password)
        assert back.status_code == 200
        assert str(back.request.url) == f"{portal.url}/consents?done=reauthenticated"
        assert b.post(f"/requests/{world.request_id}/approve").status_code == 303
    consent = _consent_of_or_none(world)
    assert consent is not None
    assert consent.status is ConsentStatus.ACTIVE


def _consent_of_or_none(world: OidcWorld) -> Consent | None:
    r = _consents(world, world.provider.sign(_good_claims(world)))
    assert r.status_code == 200, r.text
    found = [Consent.model_validate(c) for c in r.json()]
    return found[0] if found else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(world: OidcWorld) -> str:
    """Algorithm confusion: HS256 with the provider's public key (its JWK) as the secret."""
    (jwk,) = world.provider.jwks()["keys"]
    header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": jwk["kid"]}).encode())
    body = _b64(json.dumps(_good_claims(world)).encode())
    secret = json.dumps(jwk).encode()
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def _unsigned(world: OidcWorld) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    return f"{header}.{_b64(json.dumps(_good_claims(world)).encode())}."


def test_tokens_of_another_issuer_expired_for_another_audience_or_alg_are_refused_and_audited(
    world: OidcWorld, tmp_path: Path
) -> None:
    other = start_provider(
        tmp_path, clients=[], accounts=[], resource=RESOURCE, name="another-provider"
    )
    try:
        from_other = other.sign(_good_claims(world, iss=other.issuer))
    finally:
        other.stop()
    now = int(time.time())
    bad = {
        "another issuer": from_other,
        "another issuer named, the provider's key": world.provider.sign(
            _good_claims(world, iss="https://idp.elsewhere.example")
        ),
        "expired": world.provider.sign(_good_claims(world, iat=now - 7200, exp=now - 3600)),
        "another audience": world.provider.sign(_good_claims(world, aud="https://other.example")),
        "HS256 with the public key": _hs256_with_public_key(world),
        "alg none": _unsigned(world),
        "an ID token (typ JWT)": world.provider.sign(_good_claims(world), {"typ": "JWT"}),
    }
    assert _consents(world, world.provider.sign(_good_claims(world))).status_code == 200
    node = world.cluster.procs[str(MACHIDA)]
    for why, token in bad.items():
        r = _consents(world, token)
        assert r.status_code == 401, (why, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), why
        mine = httpx.get(
            f"{node.url}/me/accesses", headers={"Authorization": f"Bearer {token}"}, timeout=20
        )
        assert mine.status_code == 401, (why, mine.text)
    # The consent service audits every refusal of its API in its own log.
    engine = make_engine(database_url(world.settings, "consent-audit"))
    try:
        log = audit_log(world.settings, engine, CONSENT_LOG)
        refusals = [
            e.record
            for e in log.search(EntryQuery(kind="refusal"), limit=100).entries
            if e.record.get("extra", {}).get("route") == "GET /consent/v1/consents"
        ]
    finally:
        engine.dispose()
    assert len(refusals) >= len(bad)
    assert all(r["status"] == 401 for r in refusals)


def test_a_rotated_provider_key_is_picked_up_without_restart(world: OidcWorld) -> None:
    with PortalSession(world.portal.url, world.provider.issuer) as b:
        assert b.sign_in(CITIZEN.login, CITIZEN.password).status_code == 200
        new_kid = world.provider.rotate()
        token = world.provider.sign(_good_claims(world))
        assert _kid(token) == new_kid
        # The services refetch the provider's keys for the unknown kid (at most once a second).
        deadline = time.monotonic() + 20
        status = 0
        while time.monotonic() < deadline:
            status = _consents(world, token).status_code
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200
        # A new sign-in: ID token and access token signed with the new key, no restart.
        b.sign_out()
        assert b.sign_in(CITIZEN.login, CITIZEN.password).status_code == 200
        assert _kid(_session_token(b)) == new_kid
        assert b.get("/consents").status_code == 200


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def _session_token(b: PortalSession) -> str:
    """The access token in the portal's session cookie (base64url JSON, then its HMAC)."""
    body = b.cookies["oo_portal_session"].split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["t"])


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium is not at /usr/bin/chromium")
def test_chromium_signs_in_through_the_providers_pages_and_signs_out(world: OidcWorld) -> None:
    """Debian's Chromium (never a downloaded browser): a citizen signs in at the provider's
    login and consent pages, approves and revokes a consent, signs out at the provider; an
    auditor signs in, searches the log and signs out."""
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path("test-artifacts/screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            p = browser.new_context().new_page()
            p.set_default_timeout(15_000)
            _browser_sign_in(p, world, CITIZEN)
            p.wait_for_selector("h1:has-text('わたしの同意')")
            assert p.locator("[data-dev-issuer]").count() == 0
            p.screenshot(path=str(shots / "oidc-citizen-consents.png"), full_page=True)
            p.get_by_role("button", name="承認する").click()
            p.wait_for_selector(".flash")
            assert p.locator("[data-status='active']").count() == 1
            p.get_by_role("link", name="撤回").first.click()
            p.get_by_role("button", name="撤回する").click()
            p.wait_for_selector(".flash")
            assert p.locator("[data-status='revoked']").count() == 1
            _browser_sign_out(p, world)
            _browser_sign_in(p, world, AUDITOR)
            p.wait_for_selector("h1:has-text('ログ検索')")
            p.get_by_role("button", name="検索").click()
            p.locator("a.entry-link").first.click()
            p.wait_for_selector(".verification")
            assert p.locator(".verification").get_attribute("data-outcome") == "ok"
            _browser_sign_out(p, world)
        finally:
            browser.close()


def _browser_sign_in(p: Any, world: OidcWorld, who: Account) -> None:
    p.goto(world.portal.url + "/signin")
    p.get_by_role("link", name="認証基盤でログイン").click()
    p.wait_for_url(world.provider.issuer + "/**")
    p.get_by_label("Login ID").fill(who.login)
    p.get_by_label("Password").fill(who.password)
    p.get_by_role("button", name="Sign in").click()
    if p.locator("h1:has-text('Authorize')").count():
        p.get_by_role("button", name="Allow").click()
    p.wait_for_url(world.portal.url + "/**")


def _browser_sign_out(p: Any, world: OidcWorld) -> None:
    p.get_by_role("button", name="ログアウト").click()
    p.wait_for_url(world.provider.issuer + "/**")
    p.get_by_role("button", name="Yes, sign me out").click()
    p.wait_for_url(world.portal.url + "/signin")
    assert p.locator("#signin-oidc").count() == 1
