"""The portal session: one signed cookie holding the CSRF token and, once signed in, the bearer
token the identity provider (or the development issuer) gave, when the person authenticated
and when the session started; and, during a sign-in at the provider, a second short-lived
signed cookie holding that sign-in's ``state``, ``nonce`` and PKCE verifier.

Concept: a cookie is ``base64url(JSON) "." hex(HMAC-SHA256(key, base64url(JSON)))``, the key
derived from the portal secret and the cookie's purpose (a sign-in cookie never passes for a
session); the server keeps no session state. The bearer token inside is itself verified on
every request by ``exchange.tokens.TokenVerifier`` (expiry included), and the session ends
``session_lifetime_s`` after it started whatever the token says, so the HMAC only stops a
visitor from swapping in another token, CSRF value or time. CSRF: every POST form carries the
session's random CSRF token, compared in constant time (session-bound synchronizer token, OWASP
CSRF cheat sheet). A fresh CSRF token is drawn at sign-in and sign-out (stops session fixation).

Trust assumption: the secret (``Settings.portal_secret``, else random per process) stays on the
server; cookies are ``HttpOnly``, ``Secure`` and ``SameSite=Lax``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "MAX_COOKIE_BYTES",
    "PENDING_COOKIE",
    "SESSION_COOKIE",
    "PendingSignIn",
    "Session",
    "SessionCodec",
    "same_token",
]

SESSION_COOKIE = "oo_portal_session"
PENDING_COOKIE = "oo_portal_signin"
MAX_COOKIE_BYTES = 4096
CSRF_TOKEN_BYTES = 32

Via = Literal["dev", "oidc"]


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    token: str | None = None
    auth_time: int | None = None
    """When the person last proved who they are (the ID token's ``auth_time``), epoch seconds."""
    started: int | None = None
    """When this session began (sign-in), epoch seconds: it ends ``session_lifetime_s`` later."""
    via: Via | None = None
    """How the person signed in: at the identity provider, or the development issuer."""
    acting_for: str | None = None
    """The mandate under which the person acts for someone ("acting for …"), or None."""
    acting_subject: str | None = None
    """Whom that mandate represents, for the banner only: the backends check the mandate."""

    @classmethod
    def fresh(
        cls,
        token: str | None = None,
        *,
        auth_time: int | None = None,
        started: int | None = None,
        via: Via | None = None,
    ) -> Session:
        return cls(secrets.token_urlsafe(CSRF_TOKEN_BYTES), token, auth_time, started, via)


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """One sign-in under way at the provider (OpenID Connect Core §3.1.2.1, RFC 7636)."""

    state: str
    nonce: str
    verifier: str
    """The PKCE code verifier; only its S256 challenge went to the provider."""
    next: str
    """The local path to return to."""
    reauth: bool
    created: int


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time equality of two CSRF tokens (no timing oracle on the prefix)."""
    if not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class SessionCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the portal secret must be at least 16 bytes")
        self._keys = {
            purpose: hashlib.sha256(label + b"\x00" + secret).digest()
            for purpose, label in (
                ("session", b"onceonly-portal-session"),
                ("pending", b"onceonly-portal-oidc-signin"),
            )
        }

    def _mac(self, purpose: str, body: str) -> str:
        return hmac.new(self._keys[purpose], body.encode(), hashlib.sha256).hexdigest()

    def _seal(self, purpose: str, data: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
        return f"{body}.{self._mac(purpose, body)}"

    def _open(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        if not value or len(value) > MAX_COOKIE_BYTES or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(self._mac(purpose, body), mac):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
        except (ValueError, TypeError):
            return None
        return data if isinstance(data, dict) else None

    def encode(self, session: Session) -> str:
        data: dict[str, Any] = {"c": session.csrf, "t": session.token}
        if session.token is not None:
            data |= {"a": session.auth_time, "s": session.started, "v": session.via}
            if session.acting_for is not None:
                data |= {"m": session.acting_for, "r": session.acting_subject}
        return self._seal("session", data)

    def decode(self, value: str | None) -> Session | None:
        """The session in ``value``, or ``None`` for anything missing, altered or malformed."""
        data = self._open("session", value)
        if data is None:
            return None
        csrf, token = data.get("c"), data.get("t")
        auth_time, started, via = data.get("a"), data.get("s"), data.get("v")
        if not isinstance(csrf, str) or not csrf or not (token is None or isinstance(token, str)):
            return None
        if not all(v is None or isinstance(v, int) for v in (auth_time, started)):
            return None
        if via not in (None, "dev", "oidc"):
            return None
        acting_for, acting_subject = data.get("m"), data.get("r")
        if not all(
            v is None or (isinstance(v, str) and len(v) <= 128)
            for v in (acting_for, acting_subject)
        ):
            return None
        if token is None:
            acting_for = acting_subject = None
        return Session(csrf, token, auth_time, started, via, acting_for, acting_subject)

    def encode_pending(self, pending: PendingSignIn) -> str:
        return self._seal("pending", asdict(pending))

    def decode_pending(self, value: str | None) -> PendingSignIn | None:
        data = self._open("pending", value)
        if data is None:
            return None
        try:
            pending = PendingSignIn(**data)
        except TypeError:
            return None
        texts = (pending.state, pending.nonce, pending.verifier, pending.next)
        if not all(isinstance(t, str) and t for t in texts):
            return None
        if not isinstance(pending.reauth, bool) or not isinstance(pending.created, int):
            return None
        return pending
