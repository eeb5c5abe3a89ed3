"""Verification of node-to-node messages, step by step (docs/protocol.md §3 and §4).

Provider side, ``verify_request`` — each step names the attack it stops:
  (1) parse with size limits and a closed schema ........ malformed / oversized input
  (2) the service is hosted by this node ................ misrouted or probing requests
  (3) the sender is a subsystem in the verified registry  unknown members
  (4) the sender's certificate: chains to the CA (4a), valid now (4b), not revoked (4c),
      names the sender (4d) ............................. forged, expired, revoked, borrowed keys
  (5) the signature over the canonical envelope ......... tampering with any envelope field
  (6) the body hash ..................................... swapping the body
  (7) created-at within the clock-skew window ........... delayed replays, pre-dated messages
  (8) replay: (sender, message id) never seen ........... replays inside the window (replay.py)
Steps (9)–(13) — access right, policy, consent, adapter, signed response — are in
``exchange.node.provider``.

Consumer side, ``verify_response``:
  (C5a) signed by the provider subsystem named by the service ... a third party answering
  (C5b) message id and request hash echo our request .............. a response to another request
  (C5c) body hash ................................................ swapping the body
  (C5d) created-at within the skew window ........................ stale responses
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from exchange.central_config import VerifiedRegistry
from exchange.envelope import (
    RequestEnvelope,
    ResponseEnvelope,
    UnverifiedRequest,
    UnverifiedResponse,
    body_hash,
    request_hash,
)
from exchange.errors import ClientError, NotFoundError, VerificationError
from exchange.identifiers import ClientId, ServiceId

__all__ = ["VerifiedRequest", "VerifiedResponse", "verify_request", "verify_response"]


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    envelope: RequestEnvelope
    client: ClientId
    service: ServiceId
    body: bytes
    request_hash: str


@dataclass(frozen=True, slots=True)
class VerifiedResponse:
    envelope: ResponseEnvelope
    body: bytes


def _check_skew(created_at: datetime, now: datetime, max_skew_s: int) -> None:
    if created_at.tzinfo is None or abs(now - created_at) > timedelta(seconds=max_skew_s):
        raise VerificationError("message time outside the allowed clock skew")


def verify_request(
    msg: UnverifiedRequest,
    *,
    registry: VerifiedRegistry,
    hosted: frozenset[ClientId],
    now: datetime,
    max_skew_s: int,
) -> VerifiedRequest:
    env = msg.envelope
    try:
        client = ClientId.parse(env.client)
        service = ServiceId.parse(env.service)
    except ClientError as exc:
        raise VerificationError("malformed identifiers") from exc
    # (2) hosted here.
    if service.provider not in hosted:
        raise NotFoundError(
            "service not hosted by this node", code="Server.ServerProxy.UnknownService"
        )
    # (3) + (4) sender known, certificate valid; the verifier for the signing key.
    if not registry.has_subsystem(client):
        raise VerificationError("unknown sender")
    verifier = registry.member_verifier(client, msg.kid, now=now)
    # (5) signature over exactly the envelope received.
    verifier.verify_detached(msg.signature, msg.signing_input())
    # (6) body hash.
    if body_hash(msg.body) != env.body_hash:
        raise VerificationError("body hash mismatch")
    # (7) clock skew.
    _check_skew(env.created_at, now, max_skew_s)
    return VerifiedRequest(env, client, service, msg.body, request_hash(msg.raw_envelope))


def verify_response(
    msg: UnverifiedResponse,
    *,
    request: RequestEnvelope,
    sent_request_hash: str,
    registry: VerifiedRegistry,
    now: datetime,
    max_skew_s: int,
) -> VerifiedResponse:
    env = msg.envelope
    provider = ServiceId.parse(request.service).provider
    # (C5a) signed by the provider subsystem itself.
    if env.provider != str(provider):
        raise VerificationError("response from another subsystem")
    registry.member_verifier(provider, msg.kid, now=now).verify_detached(
        msg.signature, msg.signing_input()
    )
    # (C5b) bound to our request.
    if env.message_id != request.message_id or env.request_hash != sent_request_hash:
        raise VerificationError("response not bound to this request")
    # (C5c) body hash.
    if body_hash(msg.body) != env.body_hash:
        raise VerificationError("body hash mismatch")
    # (C5d) freshness.
    _check_skew(env.created_at, now, max_skew_s)
    return VerifiedResponse(env, msg.body)
