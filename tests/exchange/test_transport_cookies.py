"""The node-to-node transport keeps no cookies: a peer cannot tag this node's later requests.

Nodes are addressed by host name in production (aiohttp's default jar already ignores cookies of
bare IP addresses), so the peer here is `localhost` (the server listens on 127.0.0.1 only)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from exchange.node.transport import AiohttpTransport


def test_a_peers_cookie_is_neither_kept_nor_sent_back() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="ok")
        response.set_cookie("tag", "node-a", path="/")
        return response

    async def run() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        transport = AiohttpTransport()
        try:
            for _ in range(2):
                got = await transport.post(
                    f"http://localhost:{port}/x1/messages", b"{}", {}, timeout_s=5
                )
                assert got.status == 200
                assert "tag=node-a" in got.headers.get("Set-Cookie", "")
            await transport.get(f"http://localhost:{port}/other", {}, timeout_s=5)
        finally:
            await transport.aclose()
            await runner.cleanup()

    asyncio.run(run())
    assert seen == [None, None, None]
