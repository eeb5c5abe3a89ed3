"""Redirects stay on the origin the caller connected to, whatever Host header it sent."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.routing import Mount

from exchange.web.redirects import RelativeRedirects


def _root() -> FastAPI:
    inner = FastAPI()

    @inner.get("/")
    def home() -> dict[str, str]:
        return {"ok": "yes"}

    @inner.get("/away")
    def away() -> RedirectResponse:
        return RedirectResponse("https://id.example/login", status_code=303)

    root = FastAPI()
    root.add_middleware(RelativeRedirects)
    root.router.routes.append(Mount("/portal", app=inner))
    return root


def _get(path: str, host: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=_root())
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
            return await c.get(path, headers={"host": host})

    return asyncio.run(go())


def test_the_trailing_slash_redirect_of_a_mount_does_not_echo_a_forged_host() -> None:
    r = _get("/portal", "evil.example")
    assert r.status_code in (307, 308)
    assert r.headers["location"] == "/portal/"


def test_a_redirect_to_another_origin_is_left_alone() -> None:
    r = _get("/portal/away", "evil.example")
    assert r.status_code == 303
    assert r.headers["location"] == "https://id.example/login"
