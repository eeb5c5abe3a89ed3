"""The signed message envelope between nodes (docs/protocol.md §2).

A node-to-node message is one JSON document::

    {"envelope": {...}, "signature": "<detached JWS>", "body": "<base64 body>"}

The request envelope names the message id, creation time, client, service, HTTP method and path,
purpose, subject, consent reference, the user acting, and the SHA-256 of the body. The signature is
a detached JWS by the client subsystem's key over the RFC 8785 canonical envelope. The response
envelope is signed by the provider and carries the SHA-512 hash of the canonical *request* envelope
(``request_hash``), binding every response to exactly one request.

``parse_unverified_*`` only parse: the result is an ``Unverified*`` type that nothing may trust
until ``exchange.verification`` turns it into a ``Verified*`` one (style rule 8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from exchange.canonical import b64e, canonical_json, sha256_b64
from exchange.errors import VerificationError
from exchange.ports import AuditDecision, AuditEvent, AuditKind
from exchange.signing import Signer
from exchange.subject_token import MAX_TOKEN_CHARS

if TYPE_CHECKING:
    from exchange.central_config import Restriction

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_MESSAGE_BYTES",
    "REPRESENTED_PARTY_PATTERN",
    "RequestEnvelope",
    "ResponseEnvelope",
    "SignedMessage",
    "Unverified",
    "UnverifiedRequest",
    "UnverifiedResponse",
    "UsageTerms",
    "body_hash",
    "exchange_event",
    "parse_unverified_request",
    "parse_unverified_response",
    "request_hash",
    "seal",
    "seal_request",
]

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_BYTES = MAX_BODY_BYTES * 2 + 256 * 1024
SHORT = 255
REPRESENTED_PARTY_PATTERN = r"^[A-Za-z0-9'()+,\-.=?]{1,64}/[A-Za-z0-9'()+,\-.=?]{1,128}$"
"""``CLASS/CODE`` in X-Road identifier characters (the class required here, optional in X-Road)."""


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RequestEnvelope(_Wire):
    v: Literal[1] = 1
    message_id: str = Field(min_length=1, max_length=128)
    created_at: datetime
    client: str = Field(max_length=SHORT)
    service: str = Field(max_length=SHORT)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(max_length=2048)
    purpose: str = Field(min_length=1, max_length=128)
    subject: str | None = Field(default=None, max_length=128)
    subject_token: str | None = Field(default=None, max_length=MAX_TOKEN_CHARS)
    """Instead of ``subject``: the provider's own code sealed to it by the pseudonym translator
    (``exchange.subject_token``), opaque to the consumer."""
    consent_id: str | None = Field(default=None, max_length=128)
    consent_artefact: str | None = Field(default=None, max_length=16384)
    user_id: str | None = Field(default=None, max_length=SHORT)
    issue: str | None = Field(default=None, max_length=SHORT)
    idempotency_key: str | None = Field(default=None, max_length=128)
    fields: tuple[str, ...] | None = Field(default=None, max_length=256)
    content_type: str | None = Field(default=None, max_length=SHORT)
    body_hash: str = Field(max_length=64)
    represented_party: str | None = Field(
        default=None, max_length=SHORT, pattern=REPRESENTED_PARTY_PATTERN
    )
    """``X-Road-Represented-Party``: the party the call is made on behalf of, ``CLASS/CODE``
    (onceonly: the kind of representation and the consent service's mandate id, docs/protocol.md
    §2). Signed like every other field; absent, it is left out of the canonical form, so an
    envelope without it canonicalises exactly as before it existed."""

    @model_serializer(mode="wrap")
    def _omit_absent_party(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        if data.get("represented_party", "") is None:
            del data["represented_party"]
        return data


class UsageTerms(_Wire):
    """What the consumer may do with the data of one response: use it for ``purpose`` only,
    delete it by ``delete_by`` (from the consent's data life or the statute's retention), and
    pass it on to another agency only when ``onward`` is true."""

    purpose: str = Field(min_length=1, max_length=128)
    delete_by: date
    onward: bool = False


class ResponseEnvelope(_Wire):
    v: Literal[1] = 1
    message_id: str = Field(max_length=128)
    request_hash: str = Field(max_length=128)
    created_at: datetime
    provider: str = Field(max_length=SHORT)
    status: int = Field(ge=100, le=599)
    content_type: str | None = Field(default=None, max_length=SHORT)
    body_hash: str = Field(max_length=64)
    fields: tuple[str, ...] | None = None
    basis: str | None = Field(default=None, max_length=SHORT)
    decision_id: str | None = Field(default=None, max_length=64)
    error_code: str | None = Field(default=None, max_length=128)
    terms: UsageTerms | None = Field(default=None, exclude_if=lambda v: v is None)
    """The usage terms the data travels under (docs/protocol.md §2, "Usage terms"), signed with
    the rest. Left out of the envelope when None, so that responses without terms keep the
    canonical form they had before the field existed (and the vectors their signatures)."""
    told: tuple[str, ...] | None = Field(default=None, exclude_if=lambda v: v is None)
    """The subscribers a change was published to (docs/protocol.md §9), signed with the rest; left
    out when None (no change event was published), for the same reason as ``terms``."""


E = TypeVar("E", RequestEnvelope, ResponseEnvelope)


class SignedMessage(_Wire):
    envelope: dict[str, object]
    signature: str = Field(max_length=4096)
    body: str = ""


def request_hash(envelope: RequestEnvelope | dict[str, object]) -> str:
    """SHA-512 of the canonical request envelope, base64 (88 characters, as X-Road's).

    The provider hashes the envelope exactly as received (the dict that was signed)."""
    env = envelope if isinstance(envelope, dict) else envelope.model_dump(mode="json")
    return _hash_of_canonical(canonical_json(env))


def _hash_of_canonical(canonical: bytes) -> str:
    return base64.b64encode(hashlib.sha512(canonical).digest()).decode("ascii")


def seal(envelope: RequestEnvelope | ResponseEnvelope, body: bytes, signer: Signer) -> bytes:
    """Sign ``envelope`` (detached JWS over canonical JSON) and serialise the wire message."""
    return _seal(envelope.model_dump(mode="json"), body, signer)[0]


def seal_request(envelope: RequestEnvelope, body: bytes, signer: Signer) -> tuple[bytes, str]:
    """``seal`` a request and return its ``request_hash`` too (one canonicalisation for both)."""
    wire, canonical = _seal(envelope.model_dump(mode="json"), body, signer)
    return wire, _hash_of_canonical(canonical)


def _seal(env: dict[str, object], body: bytes, signer: Signer) -> tuple[bytes, bytes]:
    canonical = canonical_json(env)
    message = {"envelope": env, "signature": signer.sign_detached(canonical), "body": b64e(body)}
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode(), canonical


@dataclass(frozen=True, slots=True)
class Unverified(Generic[E]):
    """A parsed message that nothing may trust yet (step 1 done, steps 2–8 to come)."""

    envelope: E
    raw_envelope: dict[str, object]
    signature: str
    body: bytes
    kid: str

    def signing_input(self) -> bytes:
        """The bytes the sender signed: the envelope exactly as received, canonicalised."""
        return canonical_json(self.raw_envelope)


UnverifiedRequest = Unverified[RequestEnvelope]
UnverifiedResponse = Unverified[ResponseEnvelope]


def _parse(raw: bytes) -> tuple[SignedMessage, bytes, str]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise VerificationError("message too large")
    try:
        msg = SignedMessage.model_validate_json(raw)
        body = base64.b64decode(msg.body.encode("ascii"), validate=True)
        header_b64 = msg.signature.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    except (ValidationError, ValueError, binascii.Error, UnicodeError) as exc:
        raise VerificationError("malformed message") from exc
    if len(body) > MAX_BODY_BYTES or not isinstance(header, dict):
        raise VerificationError("malformed message")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise VerificationError("malformed message")
    return msg, body, kid


def _parse_as(raw: bytes, model: type[E]) -> Unverified[E]:
    msg, body, kid = _parse(raw)
    try:
        env = model.model_validate(msg.envelope)
    except ValidationError as exc:
        raise VerificationError("malformed envelope") from exc
    return Unverified(env, msg.envelope, msg.signature, body, kid)


def parse_unverified_request(raw: bytes) -> UnverifiedRequest:
    return _parse_as(raw, RequestEnvelope)


def parse_unverified_response(raw: bytes) -> UnverifiedResponse:
    return _parse_as(raw, ResponseEnvelope)


def body_hash(body: bytes) -> str:
    return sha256_b64(body)


def exchange_event(
    env: RequestEnvelope,
    *,
    node: str,
    kind: AuditKind,
    decision: AuditDecision,
    time: datetime,
    request_hash: str,
    status: int | None,
    reason: str | None = None,
    body_hash: str | None = None,
    basis: str | None = None,
    decision_id: str | None = None,
    subject: str | None = None,
    restriction: Restriction | None = None,
) -> AuditEvent:
    """The audit record of one exchange step: who, what, why and the hashes — no personal data.

    ``subject`` is the recording agency's own code when the envelope carries a sealed one;
    ``restriction``: the exchange falls under a restricted statute, so the entry is restricted
    until then and names that statute when no other basis was decided."""
    return AuditEvent(
        time=time,
        node=node,
        kind=kind,
        decision=decision,
        client=env.client,
        service=env.service,
        purpose=env.purpose,
        subject=subject or env.subject,
        consent_id=env.consent_id,
        reason=reason,
        message_id=env.message_id,
        request_hash=request_hash,
        body_hash=body_hash or env.body_hash,
        status=status,
        basis=basis or (restriction.basis if restriction else None),
        decision_id=decision_id,
        restricted_until=restriction.until if restriction else None,
        represented_party=env.represented_party,
    )
