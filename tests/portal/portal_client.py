"""A small in-process "browser" for the fast portal tests: httpx over ``ASGITransport`` with a
cookie jar, plus the CSRF token scraped from the last page (not a test module)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.portal.portal_world import World

BASE = "https://portal.test"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class PortalClient:
    def __init__(self, world: World) -> None:
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=world.app), base_url=BASE, follow_redirects=False
        )
        self.csrf = ""

    async def __aenter__(self) -> PortalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        response = await self.http.get("/portal" + path, **kw)
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        return await self.http.post("/portal" + path, data=form)

    async def sign_in(self, who: str) -> None:
        await self.get("/signin")
        response = await self.post("/signin", {"who": who})
        assert response.status_code == 303, response.text
        home = await self.get("/")
        # Follow to the landing page to pick up the CSRF token drawn at sign-in.
        await self.get(home.headers["location"].removeprefix("/portal"))
