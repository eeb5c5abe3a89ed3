"""Redirects never send a caller to the host its ``Host`` header named (host-header injection).

A framework builds absolute redirect URLs from the request's ``Host`` header — Starlette's
trailing-slash redirect, ``request.url_for`` — so ``Host: evil.example`` would answer
``Location: http://evil.example/…``, a redirect (or a cached page's link) to the attacker's site.
Routes redirect to paths (``local_url``); ``RelativeRedirects`` makes any other redirect to the
request's own host relative, so the browser stays on the origin it actually connected to.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import Request
from starlette.datastructures import URL, Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RelativeRedirects", "local_url", "route_path"]


def route_path(scope: Scope) -> str:
    """The path inside the app, without the prefix it is mounted under (``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def local_url(request: Request, name: str, /, **path_params: Any) -> URL:
    """The path (with the mount's ``root_path``) of the route ``name``: no scheme, no host."""
    return URL(request.url_for(name, **path_params).path)


def _relative(location: str, host: str) -> str:
    parts = urlsplit(location)
    if parts.netloc and parts.netloc.lower() == host.lower():
        return urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))
    return location


class RelativeRedirects:
    """ASGI middleware: a ``Location`` pointing at the request's own ``Host`` becomes a path."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")

        async def send_relative(message: Message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message = {
                    **message,
                    "headers": [
                        (k, _relative(v.decode("latin-1"), host).encode("latin-1"))
                        if k.lower() == b"location"
                        else (k, v)
                        for k, v in message.get("headers", [])
                    ],
                }
            await send(message)

        await self._app(scope, receive, send_relative)
