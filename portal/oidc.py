"""Sign-in at an OpenID Connect provider: the portal as a relying party (authorization code flow
with PKCE), and RP-initiated logout.

Specs: OpenID Connect Core 1.0 §3.1 (code flow), RFC 7636 (PKCE, ``S256`` only), RFC 9700 §2.1
(``state`` against CSRF on the redirect, ``nonce`` against ID token injection), RFC 8707
(``resource``: the access token's audience is the services' API), OpenID Connect RP-Initiated
Logout 1.0 (``end_session_endpoint``).

The flow, with the step each check stops:
(S1) ``begin``: fresh random ``state``, ``nonce`` and PKCE verifier, kept in a signed,
     short-lived, HttpOnly cookie (``portal._session.PendingSignIn``); only the S256 challenge
     goes to the provider — a stolen code is useless without the verifier;
(S2) ``finish``: the ``state`` that came back equals the cookie's (constant time) — stops a
     code injected into another person's browser (login CSRF); a sign-in older than
     ``MAX_SIGNIN_S`` is refused;
(S3) the code is exchanged at the token endpoint (client authentication and the verifier);
(S4) the ID token is verified (``exchange.oidc.verify_id_token``: pinned ``alg``, JWKS, ``iss``,
     ``aud``/``azp``, ``exp``, ``nonce``, and for a re-authentication a fresh ``auth_time``);
(S5) the access token is verified as the services will verify it (the portal's
     ``TokenVerifier``): the session holds it and forwards it; its principal is who signed in.

Trust assumption: the provider's endpoints come from its discovery document, fetched from the
configured issuer and checked to name it; the client secret is read from a file or the
environment, never the command line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlencode, urlsplit

import httpx
from pydantic import SecretStr

from exchange.errors import AuthenticationError, TransportError, UnavailableError
from exchange.oidc import JwksKeys, ProviderMetadata, discover, verify_id_token
from exchange.tokens import Principal, TokenVerifier
from portal._session import PendingSignIn

__all__ = ["MAX_SIGNIN_S", "OidcSignIn", "SignedIn", "pkce_challenge"]

MAX_SIGNIN_S = 600
"""A sign-in started at the provider must come back within this time."""
VERIFIER_BYTES = 48  # 64 characters, within RFC 7636's 43–128
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, ``S256``: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A finished sign-in: the verified access token and who it names, and when they
    authenticated."""

    access_token: str
    principal: Principal
    auth_time: int


class OidcSignIn:
    """The portal's client at one provider. ``api`` verifies the access tokens (the services'
    audience); ``keys`` are the provider's (shared with ``api`` when both use one JWKS)."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: SecretStr | None,
        redirect_uri: str,
        post_logout_redirect_uri: str | None,
        scopes: list[str],
        resource: str | None,
        id_token_algorithms: list[str],
        keys: JwksKeys,
        api: TokenVerifier,
        http: httpx.Client,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._secret = client_secret
        self.redirect_uri = redirect_uri
        self.post_logout_redirect_uri = post_logout_redirect_uri
        self._scopes = scopes if "openid" in scopes else ["openid", *scopes]
        self._resource = resource
        self._algorithms = id_token_algorithms
        self._keys = keys
        self._api = api
        self._http = http
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None

    @property
    def origin(self) -> str:
        """The provider's origin (the portal's forms may lead there: sign-out)."""
        parts = urlsplit(self.issuer)
        return f"{parts.scheme}://{parts.netloc}"

    def metadata(self) -> ProviderMetadata:
        """The discovery document, fetched once (again after a failure)."""
        with self._lock:
            if self._metadata is None:
                self._metadata = discover(self.issuer, http=self._http)
            return self._metadata

    def begin(self, *, next_path: str, reauth: bool, now: datetime) -> tuple[str, PendingSignIn]:
        """(S1) The provider's authorization URL and the pending sign-in to keep in a cookie.
        ``reauth`` asks the provider to authenticate the person again (``prompt=login``,
        ``max_age=0``), for a sensitive action."""
        pending = PendingSignIn(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(VERIFIER_BYTES),
            next=next_path,
            reauth=reauth,
            created=int(now.timestamp()),
        )
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self._scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        if self._resource:
            params["resource"] = self._resource
        if reauth:
            params |= {"prompt": "login", "max_age": "0"}
        return f"{self.metadata().authorization_endpoint}?{urlencode(params)}", pending

    def finish(self, pending: PendingSignIn, *, code: str, state: str, now: datetime) -> SignedIn:
        """(S2)–(S5); ``AuthenticationError`` for anything that does not check out,
        ``TransportError``/``UnavailableError`` when the provider cannot be used."""
        if not hmac.compare_digest(pending.state.encode(), state.encode()):  # (S2)
            raise AuthenticationError("sign-in state mismatch")
        if not 0 <= now.timestamp() - pending.created <= MAX_SIGNIN_S:
            raise AuthenticationError("sign-in took too long")
        tokens = self._exchange(code, pending.verifier)  # (S3)
        id_token, access_token = tokens.get("id_token"), tokens.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise AuthenticationError("the provider sent no ID token or access token")
        claims = verify_id_token(  # (S4)
            id_token,
            self._keys,
            issuer=self.issuer,
            client_id=self.client_id,
            algorithms=self._algorithms,
            nonce=pending.nonce,
            now=now,
            auth_after=datetime.fromtimestamp(pending.created, now.tzinfo)
            if pending.reauth
            else None,
        )
        principal = self._api.verify(access_token, now=now)  # (S5)
        return SignedIn(access_token, principal, claims.auth_time or claims.issued_at)

    def _exchange(self, code: str, verifier: str) -> dict[str, object]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        if self._resource:
            form["resource"] = self._resource
        auth: httpx.Auth | None = None
        if self._secret is not None:  # client_secret_basic (Core §9)
            # RFC 6749 §2.3.1: both form-urlencoded before the Basic encoding.
            auth = httpx.BasicAuth(
                quote(self.client_id, safe=""), quote(self._secret.get_secret_value(), safe="")
            )
        else:  # a public client: PKCE alone binds the code
            form["client_id"] = self.client_id
        try:
            response = self._http.post(
                self.metadata().token_endpoint,
                data=form,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TransportError("the identity provider cannot be reached") from exc
        if response.status_code in (400, 401):  # invalid_grant etc.: this sign-in is bad
            raise AuthenticationError("the identity provider refused the code")
        if response.status_code != 200 or len(response.content) > MAX_TOKEN_RESPONSE_BYTES:
            raise UnavailableError(f"the identity provider answered {response.status_code}")
        try:
            data = response.json()
        except ValueError as exc:
            raise UnavailableError("the identity provider sent a malformed answer") from exc
        if not isinstance(data, dict) or str(data.get("token_type", "")).lower() != "bearer":
            raise UnavailableError("the identity provider sent a malformed answer")
        return data

    def logout_url(self) -> str | None:
        """RP-initiated logout at the provider, coming back to ``post_logout_redirect_uri``;
        ``None`` if the provider has no ``end_session_endpoint`` (or cannot be reached)."""
        try:
            endpoint = self.metadata().end_session_endpoint
        except (UnavailableError, TransportError):
            return None
        if endpoint is None:
            return None
        params = {"client_id": self.client_id}
        if self.post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = self.post_logout_redirect_uri
        return f"{endpoint}?{urlencode(params)}"
