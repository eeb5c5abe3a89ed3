"""Bearer tokens for citizens and auditors (JWT), and the development issuer.

DESIGN "Trust": citizens and auditors authenticate with JWTs from one configured issuer: an
OpenID Connect provider whose keys come from its JWKS (``exchange.oidc.JwksKeys``), or one pinned
public key (``StaticKey``: an Ed25519 PEM, e.g. the development issuer's). The demo ships a
development issuer whose key ``onceonly keys dev-issuer`` makes in the data directory; the
services trust it only when the demo or ``ONCEONLY_ALLOW_DEV_ISSUER`` says so
(``onceonly.wiring.token_verifier``).

``TokenVerifier.verify``, in order (each step names the attack it stops):

(T1) the header's ``alg`` is one of the algorithms pinned for this issuer — stops ``none``, and
     HS256 signed with the public key as the HMAC secret (algorithm confusion);
(T2) the header's ``typ``, when one is pinned (``at+jwt``, RFC 9068 §4) — stops an ID token
     presented as an access token;
(T3) the key is the issuer's key for the header's ``kid`` (a JWKS lookup, refetched, bounded,
     when the ``kid`` is unknown: a rotated key is picked up without restart);
(T4) signature, ``iss``, ``aud``, ``exp``, ``iat`` (and ``nbf`` when present) with a small leeway
     (``LEEWAY_S``) — stops forged tokens, tokens of another issuer or for another service,
     and expired ones; a lifetime over ``MAX_TOKEN_LIFETIME_S`` is refused too;
(T5) the claims are mapped to a ``Principal`` by the operator's ``ClaimMapping`` (which claim
     holds the citizen id, which holds roles, which role values mean ``auditor``).

Every failure is one opaque ``AuthenticationError("invalid token")`` (no oracle on which step
failed); an issuer whose keys cannot be fetched is ``UnavailableError`` (503, retry later).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.errors import AuthenticationError, ConfigurationError
from exchange.keystore import DEV_ISSUER_COMMAND, MissingKeyError
from exchange.signing import load_private_key, save_private_key

__all__ = [
    "DEV_ISSUER_KEY",
    "KNOWN_ROLES",
    "ClaimMapping",
    "DevIssuer",
    "IssuerKeys",
    "Principal",
    "StaticKey",
    "TokenVerifier",
]

LEEWAY_S = 30
MAX_TOKEN_LIFETIME_S = 12 * 3600
MAX_TOKEN_BYTES = 16 * 1024
DEV_ISSUER_KEY = "dev-issuer.key"
KNOWN_ROLES = frozenset({"citizen", "auditor", "staff"})
"""Roles onceonly knows: citizens, auditors, and counter staff of the one-stop desk."""
_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
_ASYMMETRIC = frozenset(
    {"EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)


def pinned_algorithms(algorithms: Sequence[str]) -> tuple[str, ...]:
    """``algorithms`` checked: not empty, and only public-key algorithms (an HMAC or ``none``
    would let anyone holding the public key mint tokens)."""
    if not algorithms:
        raise ConfigurationError("pin at least one token algorithm (an empty list allows none)")
    bad = [a for a in algorithms if a not in _ASYMMETRIC]
    if bad:
        raise ConfigurationError(f"token algorithms must be public-key algorithms, not {bad}")
    return tuple(algorithms)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says is calling: a citizen (``sub`` is their id) or an auditor."""

    subject: str
    roles: frozenset[str]
    name: str | None = None
    token: str = field(default="", repr=False, compare=False)
    """The verified token itself, for a service that must show the caller's authority to another
    (a node asking the pseudonym translator for this citizen's codes at its own agencies)."""
    expires_at: int = field(default=0, compare=False)
    """The token's ``exp`` (seconds since the epoch); 0 when unknown."""

    @property
    def is_auditor(self) -> bool:
        return "auditor" in self.roles


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """How an issuer's claims become a ``Principal`` (the operator maps them in settings).

    ``citizen_claim``: the claim holding the citizen id (the subject the services know); ``None``
    means ``sub`` is the citizen id and roles come only from ``roles_claim`` (the development
    issuer). When set, a token carrying it is a citizen's, and one without it is not (an
    auditor's account needs no citizen id; its subject is then ``sub``).
    ``role_map``: the issuer's role values to onceonly's roles (``{"onceonly-auditor":
    "auditor"}``); empty means the values are taken as they are. Only ``KNOWN_ROLES`` count.
    """

    citizen_claim: str | None = None
    roles_claim: str = "roles"
    role_map: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.role_map.values()) - KNOWN_ROLES)
        if unknown:
            raise ConfigurationError(f"role_map maps to unknown roles {unknown}")

    def principal(self, claims: Mapping[str, Any], token: str) -> Principal:
        """(T5) the principal; a claim of the wrong shape is an ``AuthenticationError``."""
        raw = claims.get(self.roles_claim, [])
        if isinstance(raw, str):
            raw = raw.split()
        if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
            raise AuthenticationError("invalid token")
        roles = {self.role_map.get(r, r if not self.role_map else "") for r in raw} & KNOWN_ROLES
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise AuthenticationError("invalid token")
        subject = sub
        if self.citizen_claim is not None:
            roles.discard("citizen")  # only the citizen claim makes a citizen
            citizen = claims.get(self.citizen_claim)
            if citizen is not None:
                if not isinstance(citizen, str) or not citizen or len(citizen) > 128:
                    raise AuthenticationError("invalid token")
                subject = citizen
                roles.add("citizen")
        name = claims.get("name")
        exp = claims.get("exp")
        return Principal(
            subject,
            frozenset(roles),
            name if isinstance(name, str) else None,
            token=token,
            expires_at=exp if isinstance(exp, int) else 0,
        )


class IssuerKeys(Protocol):
    """Where a verifier finds the issuer's public key for a token's header (step T3)."""

    def key_for(self, kid: str | None, alg: str) -> Any:
        """The key (a ``cryptography`` public key or ``jwt.PyJWK``); ``AuthenticationError`` if
        the issuer has none for ``kid``; ``UnavailableError`` if its keys cannot be fetched."""
        ...


class StaticKey:
    """One pinned Ed25519 public key (PEM): the development issuer's, or an issuer's key file."""

    def __init__(self, public_key_pem: bytes) -> None:
        try:
            key = serialization.load_pem_public_key(public_key_pem)
        except ValueError as exc:
            raise ConfigurationError("the token issuer key is not a PEM public key") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigurationError("token issuer key must be Ed25519")
        self._key = key

    def key_for(self, kid: str | None, alg: str) -> Any:
        return self._key


class TokenVerifier:
    """Verifies bearer tokens of one issuer (steps T1–T5 of the module docstring)."""

    def __init__(
        self,
        keys: IssuerKeys,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str] = ("EdDSA",),
        token_type: str | None = None,
        claims: ClaimMapping | None = None,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = pinned_algorithms(algorithms)
        self._typ = token_type.lower() if token_type else None
        self._claims = claims or ClaimMapping()

    @classmethod
    def from_pem(cls, public_key_pem: bytes, *, issuer: str, audience: str) -> TokenVerifier:
        """An issuer known by one Ed25519 public key (EdDSA tokens)."""
        return cls(StaticKey(public_key_pem), issuer=issuer, audience=audience)

    @property
    def issuer(self) -> str:
        return self._issuer

    def verify(self, token: str, *, now: datetime | None = None) -> Principal:
        try:
            if len(token) > MAX_TOKEN_BYTES:
                raise AuthenticationError("invalid token")
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg not in self._algorithms:  # (T1) alg pinned: no `none`, no HS256-with-the-key
                raise AuthenticationError("invalid token")
            typ = header.get("typ")
            if self._typ is not None and (  # (T2) an ID token is not an access token
                not isinstance(typ, str) or typ.lower().removeprefix("application/") != self._typ
            ):
                raise AuthenticationError("invalid token")
            kid = header.get("kid")
            key = self._keys.key_for(kid if isinstance(kid, str) else None, alg)  # (T3)
            claims = jwt.decode(  # (T4)
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED},
            )
            if now is not None and claims["exp"] + LEEWAY_S < now.timestamp():
                raise AuthenticationError("invalid token")
            if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME_S:
                raise AuthenticationError("invalid token")
            return self._claims.principal(claims, token)  # (T5)
        except AuthenticationError:
            raise
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise AuthenticationError("invalid token") from exc


class DevIssuer:
    """The development token issuer of the demo. Its key is made at run time, never committed."""

    def __init__(self, key: ed25519.Ed25519PrivateKey, *, issuer: str, audience: str) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def load_or_create(cls, data_dir: Path, *, issuer: str, audience: str) -> DevIssuer:
        """Provisioning (``onceonly keys dev-issuer``, the demo, tests): the key in ``data_dir``,
        made if missing. Serving components use ``load``: they never make a key."""
        path = data_dir / DEV_ISSUER_KEY
        if not path.exists():
            save_private_key(ed25519.Ed25519PrivateKey.generate(), path)
        return cls.load(path, issuer=issuer, audience=audience)

    @classmethod
    def load(cls, path: Path, *, issuer: str, audience: str) -> DevIssuer:
        """The issuer whose key is in ``path``; a missing file is ``MissingKeyError`` naming the
        command that makes it (never made here)."""
        if not path.is_file():
            raise MissingKeyError(
                "development token issuer key", path.absolute(), DEV_ISSUER_COMMAND
            )
        key = load_private_key(path)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigurationError("development issuer key must be Ed25519")
        return cls(key, issuer=issuer, audience=audience)

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verifier(self) -> TokenVerifier:
        return TokenVerifier.from_pem(
            self.public_key_pem(), issuer=self.issuer, audience=self.audience
        )

    def issue(
        self,
        subject: str,
        *,
        roles: tuple[str, ...] = ("citizen",),
        name: str | None = None,
        lifetime: timedelta = timedelta(hours=1),
        now: datetime | None = None,
    ) -> str:
        now = now or datetime.now(UTC)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": int(now.timestamp()),
            "exp": int((now + lifetime).timestamp()),
            "jti": str(uuid.uuid4()),
            "roles": list(roles),
        }
        if name:
            claims["name"] = name
        return jwt.encode(claims, self._key, algorithm="EdDSA")
