"""Sessions of the portal (issue 16): bounded lifetime, re-authentication before granting a
consent, the development sign-in labelled, the sign-in cookie distinct from the session, PKCE."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from portal._session import PendingSignIn, Session, SessionCodec
from portal.oidc import pkce_challenge
from tests.consent.consent_factories import ALICE
from tests.portal.portal_client import PortalClient
from tests.portal.portal_world import World, build_world


def run(world: World, scenario: Callable[[PortalClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with PortalClient(world) as c:
            await scenario(c)

    asyncio.run(main())


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def timed(db_url: str, make_db_url: Callable[[], str], tmp_path: Path) -> tuple[World, Clock]:
    clock = Clock(datetime.now(UTC))
    world = build_world(
        db_url,
        make_db_url(),
        tmp_path,
        clock=clock,
        session_lifetime_s=600,
        reauth_max_age_s=120,
    )
    clock.now = world.now - timedelta(
        seconds=700
    )  # behind real time: tokens are never "issued in the future"
    return world, clock


def test_the_development_sign_in_is_labelled_on_its_page_and_every_page_after(
    world: World,
) -> None:
    async def scenario(c: PortalClient) -> None:
        page = await c.get("/signin")
        assert "data-dev-issuer" in page.text
        await c.sign_in(ALICE)
        consents = await c.get("/consents")
        assert 'class="dev-banner"' in consents.text

    run(world, scenario)


def test_a_session_ends_after_its_lifetime_whatever_its_token_says(
    timed: tuple[World, Clock],
) -> None:
    world, clock = timed

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        assert (await c.get("/consents")).status_code == 200
        clock.now += timedelta(seconds=599)
        assert (await c.get("/consents")).status_code == 200
        clock.now += timedelta(seconds=2)  # the token (an hour) is still valid; the session not
        ended = await c.get("/consents")
        assert ended.status_code == 303
        assert ended.headers["location"].endswith("/signin?next=1")

    run(world, scenario)


def test_granting_a_consent_with_an_old_authentication_asks_to_sign_in_again(
    timed: tuple[World, Clock],
) -> None:
    world, clock = timed
    request_id = world.alice_request.id

    async def scenario(c: PortalClient) -> None:
        await c.sign_in(ALICE)
        clock.now += timedelta(seconds=121)
        asked = await c.post(f"/requests/{request_id}/approve")
        assert asked.status_code == 303
        assert asked.headers["location"].endswith("/signin?reauth=1")
        assert world.consent.get_request(ALICE, request_id, now=clock.now).status.value == "pending"
        again = await c.get("/signin?reauth=1")
        assert "もう一度ログインしてください" in again.text
        await c.sign_in(ALICE)
        done = await c.post(f"/requests/{request_id}/approve")
        assert done.status_code == 303
        assert done.headers["location"].endswith("done=approved")

    run(world, scenario)


def test_without_a_provider_the_provider_sign_in_routes_are_not_found(world: World) -> None:
    async def scenario(c: PortalClient) -> None:
        assert (await c.get("/signin/oidc")).status_code == 404
        assert (await c.get("/signin/callback?code=x&state=y")).status_code == 404

    run(world, scenario)


def test_a_pending_sign_in_cookie_never_passes_for_a_session_or_back() -> None:
    codec = SessionCodec(b"s" * 32)
    pending = codec.encode_pending(PendingSignIn("st", "no", "ver", "/", False, 1))
    session = codec.encode(Session.fresh("token", auth_time=1, started=1, via="oidc"))
    assert codec.decode_pending(pending) == PendingSignIn("st", "no", "ver", "/", False, 1)
    assert codec.decode(pending) is None
    assert codec.decode_pending(session) is None
    decoded = codec.decode(session)
    assert decoded is not None
    assert (decoded.token, decoded.auth_time, decoded.via) == ("token", 1, "oidc")


def test_the_pkce_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636 Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
