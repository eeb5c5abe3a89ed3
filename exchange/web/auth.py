"""Bearer-token principals for the citizen and auditor APIs (``Authorization: Bearer <JWT>``)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from exchange.errors import AuthenticationError, RefusalError
from exchange.tokens import Principal, TokenVerifier

__all__ = ["bearer_principal"]


def bearer_principal(
    verifier: TokenVerifier, *, role: str | None = None
) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the verified principal, optionally required to hold ``role``.

    Usage: ``principal: Annotated[Principal, Depends(bearer_principal(verifier, role="auditor"))]``.
    """

    def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("a bearer token is required")
        principal = verifier.verify(token.strip())
        if role is not None and role not in principal.roles:
            raise RefusalError(f"the {role} role is required", code="Client.Forbidden")
        return principal

    return dependency
