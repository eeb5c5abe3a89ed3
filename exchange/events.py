"""Signed events: the wire format, signing and verification (docs/protocol.md §7).

An event tells a recipient subsystem that something it depends on changed (a consent was
revoked, …). Events travel at least once, ordered per *stream* — one stream per (sender,
recipient) pair, named ``"<sender> > <recipient>"`` — with sequence numbers 1, 2, 3, … without
gaps. One event on the wire::

    {"event": {...}, "signature": "<detached JWS>"}

The signature is a detached JWS over the RFC 8785 canonical ``{"domain": "onceonly-event",
"event": <event>}``: a domain of its own, so an event can never pass as an envelope or a node
request and back, whatever key signs it. A member subsystem signs with the key of its certificate
in the central registry (``MemberSigner``); the consent service, which is no member, signs with its
issuer key, which the verified registry names (``EventSigner``, a JWS ``typ`` of its own).

Receiver side, ``verify_event`` — each step names the attack it stops:
  (E1) parse with size limits and a closed schema ............ malformed / oversized input
  (E2) the recipient is hosted by this node .................. mis-addressed events
  (E3) the stream is the (sender, recipient) stream .......... a sender writing into another's stream
  (E4) the sender's key from the verified registry: a member's certificate — chains to the CA,
       valid now, not revoked, names the sender (steps 4a–4d of §3) — or the consent service's
       key named by the registry ............................. forged senders, revoked keys
  (E5) the signature over the canonical event ............... tampering with any field
  (E6) created-at not in the future beyond the clock skew .... pre-dated events
  (E7) (stream, seq) applied once, in order (the inbox) ...... replays, reordering
Events are not refused for being old: a retry or a catch-up pull delivers them late on purpose;
(E7) is what stops a replay.

``parse_unverified_event`` only parses: nothing may trust an ``UnverifiedEvent`` (style rule 8).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.canonical import canonical_json
from exchange.central_config import VerifiedRegistry
from exchange.errors import ClientError, VerificationError
from exchange.identifiers import ClientId
from exchange.signing import EventVerifier, Signer, public_key_from_pem

__all__ = [
    "CONSENT_SERVICE_SENDER",
    "EVENT_DOMAIN",
    "MAX_EVENT_BYTES",
    "EventEnvelope",
    "MisaddressedEventError",
    "SignedEvent",
    "UnverifiedEvent",
    "VerifiedEvent",
    "new_event",
    "parse_unverified_event",
    "sign_event",
    "stream_name",
    "verify_event",
]

EVENT_DOMAIN = "onceonly-event"
CONSENT_SERVICE_SENDER = "consent-service"
"""The sender name of the consent service (no member subsystem): its key is the registry's
``consent_service.issuer_public_key``."""
MAX_EVENT_BYTES = 64 * 1024
MAX_DATA_BYTES = 16 * 1024
SHORT = 255


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventEnvelope(_Wire):
    v: int = Field(default=1, ge=1, le=1)
    event_id: str = Field(min_length=1, max_length=64)
    stream: str = Field(min_length=1, max_length=2 * SHORT + 3)
    seq: int = Field(ge=1, le=2**62)
    sender: str = Field(min_length=1, max_length=SHORT)
    recipient: str = Field(min_length=1, max_length=SHORT)
    type: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9.\-/]+$")
    created_at: datetime
    data: dict[str, Any]


class SignedEvent(_Wire):
    event: dict[str, Any]
    signature: str = Field(max_length=4096)


class MisaddressedEventError(ClientError):
    """(E2) the event names a recipient this node does not host."""

    code = "Client.EventMisaddressed"
    status = 400


def stream_name(sender: str, recipient: str) -> str:
    return f"{sender} > {recipient}"


def _signing_input(event: dict[str, Any]) -> bytes:
    return canonical_json({"domain": EVENT_DOMAIN, "event": event})


def new_event(
    *, sender: str, recipient: str, seq: int, type: str, data: dict[str, Any], now: datetime
) -> EventEnvelope:
    return EventEnvelope(
        event_id=str(uuid.uuid4()),
        stream=stream_name(sender, recipient),
        seq=seq,
        sender=sender,
        recipient=recipient,
        type=type,
        created_at=now,
        data=data,
    )


def sign_event(event: EventEnvelope, signer: Signer) -> bytes:
    """The event on the wire: the envelope and a detached JWS over its signing input."""
    env = event.model_dump(mode="json")
    if len(canonical_json(env["data"])) > MAX_DATA_BYTES:
        raise ValueError("event data too large")
    wire = {"event": env, "signature": signer.sign_detached(_signing_input(env))}
    return json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class UnverifiedEvent:
    envelope: EventEnvelope
    raw_event: dict[str, Any]
    signature: str
    kid: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    envelope: EventEnvelope
    raw: bytes
    """The signed wire bytes, as received (kept in the inbox: evidence of what was applied)."""


def parse_unverified_event(raw: bytes) -> UnverifiedEvent:
    """(E1) size limit, closed schema, a JWS header naming a key."""
    if len(raw) > MAX_EVENT_BYTES:
        raise VerificationError("event too large")
    try:
        signed = SignedEvent.model_validate_json(raw)
        env = EventEnvelope.model_validate(signed.event)
        header_b64 = signed.signature.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    except (ValidationError, ValueError, binascii.Error, UnicodeError) as exc:
        raise VerificationError("malformed event") from exc
    kid = header.get("kid") if isinstance(header, dict) else None
    if not isinstance(kid, str):
        raise VerificationError("malformed event")
    return UnverifiedEvent(env, signed.event, signed.signature, kid, raw)


def _consent_service_verifier(registry: VerifiedRegistry) -> EventVerifier:
    entry = registry.document.consent_service
    if entry is None:
        raise VerificationError("unknown sender")
    return EventVerifier(public_key_from_pem(entry.issuer_public_key))


def verify_event(
    msg: UnverifiedEvent,
    *,
    registry: VerifiedRegistry,
    hosted: frozenset[ClientId],
    now: datetime,
    max_skew_s: int,
) -> VerifiedEvent:
    """Steps (E2)–(E6); (E7) is the inbox's (``exchange.event_inbox``). Returns or raises."""
    env = msg.envelope
    # (E2) addressed to a subsystem of this node.
    try:
        recipient = ClientId.parse(env.recipient)
    except ClientError as exc:
        raise VerificationError("malformed identifiers") from exc
    if recipient not in hosted:
        raise MisaddressedEventError("the event is addressed to a subsystem not hosted here")
    # (E3) the sender's own stream to this recipient.
    if env.stream != stream_name(env.sender, env.recipient):
        raise VerificationError("the event is not in its sender's stream")
    # (E4) the sender's key, from the verified registry only.
    payload = _signing_input(msg.raw_event)
    if env.sender == CONSENT_SERVICE_SENDER:
        verifier = _consent_service_verifier(registry)
        if verifier.kid != msg.kid:
            raise VerificationError("no key for this sender")
        # (E5)
        verifier.verify_detached(msg.signature, payload)
    else:
        try:
            sender = ClientId.parse(env.sender)
        except ClientError as exc:
            raise VerificationError("malformed identifiers") from exc
        if not registry.has_subsystem(sender):
            raise VerificationError("unknown sender")
        # (E4) + (E5): the certificate checks of a request (4a–4d), then the signature.
        registry.member_verifier(sender, msg.kid, now=now).verify_detached(msg.signature, payload)
    # (E6) not pre-dated.
    if env.created_at.tzinfo is None or env.created_at > now + timedelta(seconds=max_skew_s):
        raise VerificationError("event time in the future")
    return VerifiedEvent(env, msg.raw)
