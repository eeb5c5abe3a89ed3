"""Bearer tokens for citizens and auditors (JWT, EdDSA), and the development issuer.

DESIGN "Trust": citizens and auditors authenticate with JWTs from a configurable issuer; the demo
ships a development issuer whose key ``onceonly keys dev-issuer`` makes in the data directory.
Every decode pins the algorithm, audience, issuer, required claims and a small leeway (style rule
15) and fails with one opaque ``AuthenticationError``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from exchange.errors import AuthenticationError, ConfigurationError
from exchange.keystore import DEV_ISSUER_COMMAND, MissingKeyError
from exchange.signing import load_private_key, save_private_key

__all__ = ["DEV_ISSUER_KEY", "DevIssuer", "Principal", "TokenVerifier"]

LEEWAY_S = 30
MAX_TOKEN_LIFETIME_S = 12 * 3600
DEV_ISSUER_KEY = "dev-issuer.key"
_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says is calling: a citizen (``sub`` is their id) or an auditor."""

    subject: str
    roles: frozenset[str]
    name: str | None = None
    token: str = field(default="", repr=False, compare=False)
    """The verified token itself, for a service that must show the caller's authority to another
    (a node asking the pseudonym translator for this citizen's codes at its own agencies)."""

    @property
    def is_auditor(self) -> bool:
        return "auditor" in self.roles


class TokenVerifier:
    def __init__(self, public_key_pem: bytes, *, issuer: str, audience: str) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigurationError("token issuer key must be Ed25519")
        self._key = key
        self._issuer = issuer
        self._audience = audience

    def verify(self, token: str, *, now: datetime | None = None) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["EdDSA"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED},
            )
            if now is not None and claims["exp"] + LEEWAY_S < now.timestamp():
                raise AuthenticationError("invalid token")
            if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME_S:
                raise AuthenticationError("invalid token")
            roles = claims.get("roles", [])
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise AuthenticationError("invalid token")
            sub = claims["sub"]
            if not isinstance(sub, str) or not sub:
                raise AuthenticationError("invalid token")
            name = claims.get("name")
            return Principal(
                sub, frozenset(roles), name if isinstance(name, str) else None, token=token
            )
        except AuthenticationError:
            raise
        except (jwt.PyJWTError, KeyError, TypeError) as exc:
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
        return TokenVerifier(self.public_key_pem(), issuer=self.issuer, audience=self.audience)

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
