"""A real OpenID Connect provider for the tests (not a test module): the npm package
``oidc-provider`` run by ``tests/oidc/provider.mjs`` with Node.js on 127.0.0.1.

``.ci/run`` installs it (``npm ci --prefix tests/oidc``); where Node.js or the installed package is
missing, ``skip_reason()`` says why and the tests that need it skip. The provider makes its RSA
key at start (never on disk) and has test-only routes to rotate it and to sign arbitrary claims
with it (a token the provider's key signs whose claims are wrong).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).parent
SCRIPT = HERE / "provider.mjs"
PACKAGE = HERE / "node_modules" / "oidc-provider" / "package.json"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def skip_reason() -> str | None:
    """Why the provider cannot run here, or ``None``."""
    if shutil.which("node") is None:
        return "Node.js is not installed: the OpenID Connect provider tests need `node`"
    if not PACKAGE.is_file():
        return "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (.ci/run does)"
    return None


@dataclass(frozen=True)
class Account:
    login: str
    password: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    redirect_uri: str
    post_logout_redirect_uri: str

    def metadata(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": [self.redirect_uri],
            "post_logout_redirect_uris": [self.post_logout_redirect_uri],
        }


@dataclass
class Provider:
    issuer: str
    popen: subprocess.Popen[bytes]
    log: Path

    def rotate(self) -> str:
        """A new signing key, published beside the old one; its ``kid``."""
        r = httpx.post(f"{self.issuer}/__test/rotate", timeout=30)
        r.raise_for_status()
        return str(r.json()["kid"])

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        """``claims`` signed with the provider's current key (RS256, ``typ: at+jwt``)."""
        r = httpx.post(
            f"{self.issuer}/__test/sign",
            json={"claims": claims, "header": header or {}},
            timeout=30,
        )
        r.raise_for_status()
        return str(r.json()["token"])

    def jwks(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.issuer}/jwks", timeout=30).json()
        return data

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)


def start_provider(
    workdir: Path,
    *,
    port: int = 0,
    clients: list[Client],
    accounts: list[Account],
    resource: str,
    resource_scope: str = "onceonly",
    name: str = "provider",
) -> Provider:
    """The provider on ``127.0.0.1:port`` (0: any free port), up and answering discovery."""
    config = workdir / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "port": port,
                "clients": [c.metadata() for c in clients],
                "accounts": {
                    a.login: {"password": a.password, "claims": a.claims} for a in accounts
                },
                "resource": {"indicator": resource, "scope": resource_scope, "ttl_s": 600},
            }
        )
    )
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            ["node", str(SCRIPT), str(config)], cwd=HERE, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"the provider exited: {log.read_text()[-2000:]}")
        for line in log.read_text().splitlines():
            if line.startswith("listening "):
                provider = Provider(line.split()[1], popen, log)
                r = httpx.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=5)
                if r.status_code == 200:
                    return provider
        time.sleep(0.1)
    popen.kill()
    popen.wait(STOP_TIMEOUT_S)
    raise RuntimeError(f"the provider did not start: {log.read_text()[-2000:]}")
