"""Signed requests from a node to a platform service (the consent service's gate).

A node proves itself with the same member key that signs its envelopes, over a payload of its own
domain (``"onceonly-node-request"``), so a node request can never pass as an envelope and back:

    X-OnceOnly-Node-Client:    the subsystem signing (one of the node's own)
    X-OnceOnly-Node-Signature: detached JWS over canonical {domain, client, method, path, sha256(body), time}
    X-OnceOnly-Node-Time:      RFC 3339 UTC

The service verifies (N1) the client's certificate through the verified registry, (N2) the
signature, (N3) the time within the clock-skew window. A verified request comes back as a
``VerifiedNodeRequest`` whose ``request_id`` is the SHA-256 of what was signed (the same for a
replay, whatever encoding of the signature it carries) and whose ``valid_until`` is when (N3)
starts refusing it: a service remembers the ids of requests that change state until then and
refuses a second one (N4, docs/protocol.md §5) — a replay inside the window.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from starlette.requests import Request

from exchange.canonical import canonical_json, sha256_b64
from exchange.central_config import VerifiedRegistry
from exchange.errors import AuthenticationError, OnceOnlyError
from exchange.identifiers import ClientId
from exchange.signing import MemberSigner
from exchange.web.redirects import route_path

__all__ = [
    "VerifiedNodeRequest",
    "node_request_authenticator",
    "sign_node_request",
    "verify_node_request",
]

DOMAIN = "onceonly-node-request"
H_CLIENT = "x-onceonly-node-client"
H_SIGNATURE = "x-onceonly-node-signature"
H_TIME = "x-onceonly-node-time"


@dataclass(frozen=True, slots=True)
class VerifiedNodeRequest:
    """A node request that passed (N1)–(N3)."""

    client: ClientId
    request_id: str
    """SHA-256 (base64) of the signed payload: what a service remembers to refuse a replay."""
    valid_until: datetime
    """When (N3) stops accepting this request: how long its id must be remembered."""


def _payload(client: str, method: str, path: str, body: bytes, time: str) -> bytes:
    return canonical_json(
        {
            "domain": DOMAIN,
            "client": client,
            "method": method.upper(),
            "path": path,
            "body": sha256_b64(body),
            "time": time,
        }
    )


def sign_node_request(
    signer: MemberSigner, client: ClientId, method: str, path: str, body: bytes, *, now: datetime
) -> dict[str, str]:
    time = now.isoformat()
    return {
        H_CLIENT: str(client),
        H_TIME: time,
        H_SIGNATURE: signer.sign_detached(_payload(str(client), method, path, body, time)),
    }


def verify_node_request(
    registry: VerifiedRegistry,
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: datetime,
    max_skew_s: int,
) -> VerifiedNodeRequest:
    """The verified node request, or ``AuthenticationError`` (one opaque reason)."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        client = ClientId.parse(h.get(H_CLIENT, ""))
        signature = h[H_SIGNATURE]
        time = h[H_TIME]
        sent = datetime.fromisoformat(time)
        kid = _kid(signature)
        payload = _payload(str(client), method, path, body, time)
        # (N1) + (N2)
        registry.member_verifier(client, kid, now=now).verify_detached(signature, payload)
    except (OnceOnlyError, KeyError, ValueError) as exc:
        raise AuthenticationError("node authentication failed") from exc
    # (N3)
    window = timedelta(seconds=max_skew_s)
    if sent.tzinfo is None or abs(now - sent) > window:
        raise AuthenticationError("node authentication failed")
    return VerifiedNodeRequest(client, sha256_b64(payload), sent + window)


def _kid(jws: str) -> str:
    header_b64 = jws.split(".", 1)[0]
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str):
        raise ValueError("no kid")
    return kid


def node_request_authenticator(
    registry: Callable[[datetime], VerifiedRegistry],
    *,
    max_skew_s: int,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Callable[[Request, bytes], Awaitable[VerifiedNodeRequest]]:
    """What a service's routes call to verify a node request: (N1)–(N3) against the registry
    current at the time of the request, over the path inside the app (without the prefix it is
    mounted under, as the node signed it)."""

    async def authenticate(request: Request, body: bytes) -> VerifiedNodeRequest:
        now = clock()
        return verify_node_request(
            registry(now),
            dict(request.headers),
            request.method,
            route_path(request.scope),
            body,
            now=now,
            max_skew_s=max_skew_s,
        )

    return authenticate
