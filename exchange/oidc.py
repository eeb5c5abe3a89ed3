"""An OpenID Connect provider as the relying parties see it: its discovery document, its signing
keys (JWKS, cached, refetched on an unknown ``kid`` at most once per interval) and its ID tokens.

Specs: OpenID Connect Discovery 1.0 §4 (the document at ``/.well-known/openid-configuration``,
whose ``issuer`` must equal the configured one, §4.3 — stops a mix-up with another provider),
RFC 7517 (JWK sets), OpenID Connect Core 1.0 §3.1.3.7 (ID token validation, steps I1–I7 below).

Trust assumption: the operator configures the issuer URL; everything the provider serves is
fetched over the network and checked before use. Keys are looked up by ``kid``: an unknown one
triggers a refetch (the provider rotated its keys) but no more than once per
``min_refetch_s`` — a flood of tokens with invented ``kid`` values costs one fetch, not one each.
The set is also refetched when older than ``max_age_s`` (keys the provider retired drop out).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import jwt

from exchange.errors import AuthenticationError, ConfigurationError, UnavailableError
from exchange.tokens import LEEWAY_S, pinned_algorithms

__all__ = [
    "JWKS_MAX_AGE_S",
    "JWKS_MIN_REFETCH_S",
    "IdTokenClaims",
    "JwksKeys",
    "ProviderMetadata",
    "discover",
    "verify_id_token",
]

JWKS_MAX_AGE_S = 3600.0
"""A key set older than this is fetched again before use."""
JWKS_MIN_REFETCH_S = 10.0
"""At most one fetch per this interval, whatever unknown ``kid`` values tokens carry."""
MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 64
FETCH_TIMEOUT_S = 10.0
MAX_ID_TOKEN_LIFETIME_S = 12 * 3600


def _get_json(http: httpx.Client, url: str) -> dict[str, Any]:
    """A provider document; any transport fault, non-200 or non-JSON answer is
    ``UnavailableError`` (the provider is down or broken for now: fail closed, retry later)."""
    try:
        response = http.get(url, headers={"Accept": "application/json"})
        if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
            raise UnavailableError(f"the identity provider answered {response.status_code}")
        data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise UnavailableError("the identity provider cannot be reached") from exc
    if not isinstance(data, dict):
        raise UnavailableError("the identity provider sent a malformed document")
    return data


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of a provider's discovery document the relying parties use."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None


def discover(issuer: str, *, http: httpx.Client) -> ProviderMetadata:
    """The provider's metadata (Discovery §4); its ``issuer`` must be exactly ``issuer``."""
    doc = _get_json(http, issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not hmac.compare_digest(str(doc.get("issuer", "")).encode(), issuer.encode()):
        raise UnavailableError("the identity provider's discovery document names another issuer")
    urls: dict[str, str | None] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        value = doc.get(name)
        if value is not None and (
            not isinstance(value, str) or not value.startswith(("https://", "http://"))
        ):
            raise UnavailableError(f"the identity provider's {name} is not a URL")
        urls[name] = value
    if not (urls["authorization_endpoint"] and urls["token_endpoint"] and urls["jwks_uri"]):
        raise UnavailableError("the identity provider's discovery document is incomplete")
    return ProviderMetadata(
        issuer,
        str(urls["authorization_endpoint"]),
        str(urls["token_endpoint"]),
        str(urls["jwks_uri"]),
        urls["end_session_endpoint"],
    )


class JwksKeys:
    """The provider's signing keys by ``kid`` (``exchange.tokens.IssuerKeys``).

    ``fetch`` returns the JWK set as JSON (``JwksKeys.from_issuer`` discovers the ``jwks_uri``
    and fetches it over HTTP). Thread-safe: one fetch at a time, the others wait for it.
    """

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, Any]],
        *,
        min_refetch_s: float = JWKS_MIN_REFETCH_S,
        max_age_s: float = JWKS_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._min_refetch_s = min_refetch_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self.fetches = 0
        """How many times the set was fetched (tests and metrics)."""

    @classmethod
    def from_issuer(
        cls,
        issuer: str,
        *,
        timeout_s: float = FETCH_TIMEOUT_S,
        min_refetch_s: float = JWKS_MIN_REFETCH_S,
        max_age_s: float = JWKS_MAX_AGE_S,
    ) -> JwksKeys:
        """Keys of the provider ``issuer``, found through its discovery document (fetched with
        the first key set, and again with each later one)."""

        def fetch() -> Mapping[str, Any]:
            # A client per fetch (fetches are rare): nothing stays open between them.
            with httpx.Client(timeout=timeout_s, follow_redirects=False) as http:
                return _get_json(http, discover(issuer, http=http).jwks_uri)

        return cls(fetch, min_refetch_s=min_refetch_s, max_age_s=max_age_s)

    def _refresh(self) -> None:
        data = self._fetch()
        self.fetches += 1
        keys = data.get("keys")
        if not isinstance(keys, list) or len(keys) > MAX_KEYS:
            raise UnavailableError("the identity provider sent a malformed key set")
        found: dict[str | None, dict[str, Any]] = {}
        for jwk in keys:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue  # encryption keys never verify a signature
            kid = jwk.get("kid")
            found[kid if isinstance(kid, str) else None] = jwk
        self._keys = found

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        now = self._clock()
        with self._lock:
            due = self._attempted_at is None or now - self._attempted_at >= self._min_refetch_s
            stale = self._fetched_at is None or now - self._fetched_at >= self._max_age_s
            if (stale or kid not in self._keys) and due:
                self._attempted_at = now
                try:
                    self._refresh()
                    self._fetched_at = now
                except UnavailableError:
                    if self._fetched_at is None:
                        raise
                    # The provider is down: the keys it last published still verify.
            if self._fetched_at is None:
                raise UnavailableError("the identity provider's keys are not available yet")
            jwk = self._keys.get(kid)
            if jwk is None and kid is None and len(self._keys) == 1:
                jwk = next(iter(self._keys.values()))  # a one-key set needs no kid
            return jwk

    def key_for(self, kid: str | None, alg: str) -> Any:
        jwk = self._lookup(kid)
        if jwk is None:
            raise AuthenticationError("invalid token")
        if jwk.get("alg", alg) != alg:  # a key published for one algorithm serves only that one
            raise AuthenticationError("invalid token")
        try:
            return jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("invalid token") from exc


@dataclass(frozen=True, slots=True)
class IdTokenClaims:
    """A verified ID token's claims that sign-in uses."""

    subject: str
    auth_time: int | None
    issued_at: int
    expires_at: int
    claims: Mapping[str, Any]


def verify_id_token(
    token: str,
    keys: JwksKeys,
    *,
    issuer: str,
    client_id: str,
    algorithms: Sequence[str],
    nonce: str,
    now: datetime,
    auth_after: datetime | None = None,
) -> IdTokenClaims:
    """Core §3.1.3.7, for the authorization code flow; ``AuthenticationError`` for any failure.

    (I1) ``alg`` is one of the algorithms pinned for the provider (no ``none``, no HMAC);
    (I2) the signature verifies with the provider's key for ``kid`` (JWKS);
    (I3) ``iss`` is the provider; (I4) ``aud`` contains ``client_id`` and, with several
    audiences, ``azp`` is ``client_id`` — stops a token issued to another client;
    (I5) ``exp``/``iat`` with ``LEEWAY_S`` leeway — stops a stale token;
    (I6) ``nonce`` equals the one this sign-in sent (constant time) — stops replay and injection
    of an ID token from another session;
    (I7) with ``auth_after`` (a re-authentication asked with ``max_age``/``prompt=login``):
    ``auth_time`` is present and not earlier — stops a provider session reused as "fresh".
    """
    try:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in pinned_algorithms(algorithms):  # (I1)
            raise AuthenticationError("invalid token")
        kid = header.get("kid")
        key = keys.key_for(kid if isinstance(kid, str) else None, alg)  # (I2)
        claims = jwt.decode(  # (I2)–(I5)
            token,
            key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["iss", "aud", "exp", "iat", "sub", "nonce"]},
        )
    except AuthenticationError:
        raise
    except (ConfigurationError, jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthenticationError("invalid token") from exc
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:  # (I4)
        raise AuthenticationError("invalid token")
    exp, iat = claims["exp"], claims["iat"]
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise AuthenticationError("invalid token")
    if exp + LEEWAY_S < now.timestamp() or exp - iat > MAX_ID_TOKEN_LIFETIME_S:  # (I5)
        raise AuthenticationError("invalid token")
    given = claims["nonce"]
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
        raise AuthenticationError("invalid token")  # (I6)
    auth_time = claims.get("auth_time")
    if auth_time is not None and not isinstance(auth_time, int):
        raise AuthenticationError("invalid token")
    if auth_after is not None and (  # (I7)
        auth_time is None or auth_time + LEEWAY_S < auth_after.timestamp()
    ):
        raise AuthenticationError("invalid token")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise AuthenticationError("invalid token")
    return IdTokenClaims(sub, auth_time, iat, exp, claims)
