"""The portal session: one signed cookie holding the CSRF token and, once signed in, the bearer
token the development issuer (or a real issuer) gave.

Concept: the cookie is ``base64url(JSON) "." hex(HMAC-SHA256(secret, base64url(JSON)))``; the
server keeps no session state. The bearer token inside is itself verified on every request by
``exchange.tokens.TokenVerifier`` (expiry included), so the HMAC only stops a visitor from swapping
in another token or CSRF value. CSRF: every POST form carries the session's random CSRF token,
compared in constant time (session-bound synchronizer token, OWASP CSRF cheat sheet). A fresh CSRF
token is drawn at sign-in and sign-out (stops session fixation of the token).

Trust assumption: the secret (``Settings.portal_secret``, else random per process) stays on the
server; cookies are ``HttpOnly``, ``Secure`` and ``SameSite=Lax``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

__all__ = ["MAX_COOKIE_BYTES", "SESSION_COOKIE", "Session", "SessionCodec", "same_token"]

SESSION_COOKIE = "oo_portal_session"
MAX_COOKIE_BYTES = 4096
CSRF_TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    token: str | None = None

    @classmethod
    def fresh(cls, token: str | None = None) -> Session:
        return cls(secrets.token_urlsafe(CSRF_TOKEN_BYTES), token)


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time equality of two CSRF tokens (no timing oracle on the prefix)."""
    if not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class SessionCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the portal secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"onceonly-portal-session\x00" + secret).digest()

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def encode(self, session: Session) -> str:
        data = {"c": session.csrf, "t": session.token}
        body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
        return f"{body}.{self._mac(body)}"

    def decode(self, value: str | None) -> Session | None:
        """The session in ``value``, or ``None`` for anything missing, altered or malformed."""
        if not value or len(value) > MAX_COOKIE_BYTES or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(self._mac(body), mac):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
        except (ValueError, TypeError):
            return None
        if not isinstance(data, dict):
            return None
        csrf, token = data.get("c"), data.get("t")
        if not isinstance(csrf, str) or not csrf or not (token is None or isinstance(token, str)):
            return None
        return Session(csrf, token)
