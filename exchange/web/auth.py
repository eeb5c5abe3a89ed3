"""Bearer-token principals for the citizen and auditor APIs (``Authorization: Bearer <JWT>``).

The dependency is itself the OpenAPI security scheme (``bearerToken``, FastAPI's
``SecurityBase``): every route that checks a token declares it, with the role it needs as the
requirement's role list (OpenAPI 3.1), so the document cannot say something the route does not
check.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Security
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from exchange.errors import AuthenticationError, RefusalError
from exchange.tokens import Principal, TokenVerifier

__all__ = ["BEARER_SCHEME", "bearer_principal"]

BEARER_SCHEME = "bearerToken"


class _BearerToken(SecurityBase):
    """Verifies the bearer JWT (and the role, when one is required); raises otherwise."""

    def __init__(self, verifier: TokenVerifier, role: str | None) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="JWT",
            description="a citizen's, auditor's or counter staff's token from the configured "
            "issuer; the roles a route needs are listed in its security requirement",
        )
        self.scheme_name = BEARER_SCHEME
        self._verifier = verifier
        self._role = role

    def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("a bearer token is required")
        principal = self._verifier.verify(token.strip())
        if self._role is not None and self._role not in principal.roles:
            raise RefusalError(f"the {self._role} role is required", code="Client.Forbidden")
        return principal


def bearer_principal(verifier: TokenVerifier, *, role: str | None = None) -> Any:
    """A FastAPI security dependency: the verified principal, optionally required to hold ``role``.

    Usage: ``principal: Annotated[Principal, bearer_principal(verifier, role="auditor")]``.
    """
    return Security(_BearerToken(verifier, role), scopes=[role] if role else [])
