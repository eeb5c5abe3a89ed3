"""Signs in at the portal through the real provider's own pages over HTTP (not a test module):
what a browser does, with httpx. The portal's cookies are ``Secure`` (kept by hand, as
Chromium keeps them on http://127.0.0.1); the provider's are kept by httpx's jar."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

MAX_HOPS = 12
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_ACTION = re.compile(r'<form method="post" action="([^"]+)"')
# The provider's logout form: its confirmation page ("Yes, sign me out"), or the page that sends
# itself when there is nothing to confirm.
_LOGOUT_FORM = re.compile(r'<form[^>]*action="([^"]*/session/end/confirm)"[^>]*>(.*?)</form>', re.S)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


class PortalSession:
    def __init__(self, portal: str, provider: str) -> None:
        self.portal = portal.rstrip("/")
        self.provider = provider.rstrip("/")
        self.http = httpx.Client(base_url=self.portal, follow_redirects=False, timeout=30)
        self.idp = httpx.Client(follow_redirects=False, timeout=30)
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def __enter__(self) -> PortalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self.idp.close()

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in header.lower() or "expires=thu, 01 jan 1970" in header.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def get(self, path: str, **params: Any) -> httpx.Response:
        # (httpx drops a query already in ``path`` when given ``params``, even empty ones)
        query = {"params": params} if params else {}
        return self._keep(self.http.get(path, headers=self._headers(), **query))

    def post(self, path: str, **form: str) -> httpx.Response:
        form.setdefault("csrf", self.csrf)
        headers = self._headers() | {"Origin": self.portal}
        return self._keep(self.http.post(path, data=form, headers=headers))

    def follow(
        self, response: httpx.Response, login: str = "", password: str = ""
    ) -> httpx.Response:
        """Follows redirects across the portal and the provider, filling in the provider's
        login page (``login``/``password``) and its consent page, until the portal answers
        with something that is not a redirect to the provider; returns the last portal answer
        (or the provider's page when it stops there, e.g. a refused login)."""
        for _ in range(MAX_HOPS):
            if response.status_code in (302, 303) and "location" in response.headers:
                url = urljoin(str(response.request.url), response.headers["location"])
                response = self.open(url)
                continue
            if not str(response.request.url).startswith(self.provider):
                return response
            page = response.text
            action = _ACTION.search(page)
            if "<h1>Sign in</h1>" in page and action and login:
                response = self.idp.post(
                    urljoin(self.provider, action.group(1)),
                    data={"login": login, "password": password},
                )
                login = ""  # once: a refused login stops on the provider's page
                continue
            if "<h1>Authorize</h1>" in page and action:
                response = self.idp.post(urljoin(self.provider, action.group(1)))
                continue
            return response
        raise AssertionError("too many redirects")

    def open(self, url: str) -> httpx.Response:
        if url.startswith(self.provider):
            return self.idp.get(url)
        parts = urlsplit(url)
        return self.get(parts.path + (f"?{parts.query}" if parts.query else ""))

    def sign_in(self, login: str, password: str) -> httpx.Response:
        return self.follow(self.get("/signin/oidc"), login, password)

    def sign_out(self) -> httpx.Response:
        """The portal's sign-out, then the provider's logout page ("Yes, sign me out"), back at
        the portal's sign-in page."""
        response = self.post("/signout")
        assert response.status_code == 303, response.text
        page = self.idp.get(response.headers["location"])
        found = _LOGOUT_FORM.search(page.text)
        assert found, page.text
        form = dict(_HIDDEN.findall(found.group(2))) | {"logout": "yes"}
        done = self.idp.post(urljoin(self.provider, found.group(1)), data=form)
        return self.follow(done)
