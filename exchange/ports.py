"""The ports the kernel needs, as Protocols (DESIGN "The parts", style rule 1).

``policies``, ``consent``, ``audit`` and ``adapters`` implement these; the kernel never imports
them. The composition root (``exchange.node.app`` and the CLI) wires implementations in. Every
value crossing a port is a frozen dataclass built from *verified* data: an implementation may
trust that the envelope's signature, the sender's certificate and replay protection were checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from exchange.identifiers import ClientId, ServiceId

__all__ = [
    "CITIZEN_AGENCY",
    "AdapterRequest",
    "AdapterResponse",
    "AuditDecision",
    "AuditEvent",
    "AuditKind",
    "AuditSink",
    "ConsentDecision",
    "ConsentGate",
    "ConsentQuery",
    "JsonValue",
    "PolicyDecider",
    "PolicyDecision",
    "PolicyInput",
    "RegistryAdapter",
    "ServiceDescription",
    "SubjectSealer",
    "SubjectTokenRequest",
    "SubjectTranslator",
    "Transport",
    "TransportResponse",
]

JsonValue = Any
"""A JSON value as produced by ``json.loads`` (pydantic cannot check recursion cheaply)."""


# --- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """What the policy engine decides on. ``consent`` is the consent gate's answer, if any."""

    client: ClientId
    service: ServiceId
    purpose: str
    subject: str | None
    now: datetime
    requested_fields: tuple[str, ...] | None = None
    consent: ConsentDecision | None = None
    operation: Literal["read", "change"] = "read"
    represented_party: str | None = None
    """The signed ``X-Road-Represented-Party`` (``CLASS/CODE``), when the call is made for someone."""


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """A decision that must be explained (rule 12): truthy when allowed, with its reasons."""

    allow: bool
    fields: frozenset[str]
    basis: str | None
    reasons: tuple[str, ...]
    decision_id: str

    def __bool__(self) -> bool:
        return self.allow


class PolicyDecider(Protocol):
    """Access rights + purpose binding + legal basis + data minimisation, as one decision."""

    def decide(self, request: PolicyInput) -> PolicyDecision: ...


# --- consent -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentQuery:
    """One exchange asking to rely on a consent. ``artefact`` is the signed consent (JWS)."""

    consent_id: str
    artefact: str | None
    subject: str | None
    client: ClientId
    service: ServiceId
    purpose: str
    fields: tuple[str, ...]
    now: datetime
    message_id: str
    idempotency_key: str | None = None
    """A retry of an exchange under the same key (a new message id) is the same use: it is
    allowed on the consent it already spent, and does not count again."""


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """The consent gate's answer: truthy when the consent covers the exchange."""

    allow: bool
    consent_id: str
    fields: frozenset[str]
    reasons: tuple[str, ...] = ()
    retention_days: int | None = None
    """The consent's data life: the recipient deletes the data this many days after receiving
    it (the delete-by date of the response's usage terms). None when the gate does not say."""

    def __bool__(self) -> bool:
        return self.allow


class ConsentGate(Protocol):
    """Checks a consent (signature, status, window, purpose, client, fields) and records its use.

    ``check`` has no side effect. ``use`` checks again *and* records the use atomically, so two
    simultaneous uses of a one-time consent cannot both succeed.
    """

    def check(self, query: ConsentQuery) -> ConsentDecision: ...

    def use(self, query: ConsentQuery) -> ConsentDecision: ...


# --- audit -------------------------------------------------------------------------------------

AuditKind = Literal[
    "request",
    "response",
    "refusal",
    "consent.granted",
    "consent.paused",
    "consent.resumed",
    "consent.revoked",
    "consent.used",
    "consent.expired",
    "mandate.granted",
    "mandate.revoked",
    "procedure.step",
    "translation",
    "release",
    "event.delivered",
    "event.received",
    "event.published",
    "obligation.deleted",
    "obligation.overdue",
]


AuditDecision = Literal["allow", "deny", "error", "info"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what, why, and the hashes — never the personal data itself."""

    time: datetime
    node: str
    kind: AuditKind
    decision: AuditDecision
    client: str | None = None
    service: str | None = None
    purpose: str | None = None
    subject: str | None = None
    consent_id: str | None = None
    reason: str | None = None
    message_id: str | None = None
    request_hash: str | None = None
    body_hash: str | None = None
    decision_id: str | None = None
    basis: str | None = None
    status: int | None = None
    restricted_until: datetime | None = None
    """Set when the exchange falls under a restricted statute (``StatuteEntry.restricted_days``):
    the log keeps the event from its subject's view until then (docs/audit.md, "Restricted
    entries")."""
    represented_party: str | None = None
    """``X-Road-Represented-Party`` of the exchange (``CLASS/CODE``): the subject was represented
    under that mandate; left out of the entry when absent (docs/audit.md)."""
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A refusal records what the caller sent (a claimed client, a path, a subject): a NUL in
        # it would make PostgreSQL refuse the whole entry, and the refusal a 500 (fuzzing found
        # it). It is recorded as U+FFFD instead.
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and "\x00" in value:
                object.__setattr__(self, name, value.replace("\x00", "\ufffd"))
        if any("\x00" in k or "\x00" in v for k, v in self.extra.items()):
            clean = {
                k.replace("\x00", "\ufffd"): v.replace("\x00", "\ufffd")
                for k, v in self.extra.items()
            }
            object.__setattr__(self, "extra", clean)


_TEXT_FIELDS = (
    "node",
    "client",
    "service",
    "purpose",
    "subject",
    "consent_id",
    "reason",
    "message_id",
    "request_hash",
    "body_hash",
    "decision_id",
    "basis",
    "represented_party",
)


class AuditSink(Protocol):
    """Durably records an event before the exchange goes on (fail closed if it cannot)."""

    def record(self, event: AuditEvent) -> None: ...


# --- adapters ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceDescription:
    """What an adapter offers: becomes the registry entry and the OpenAPI of the metaservice."""

    code: str
    version: str | None
    description: str
    fields: tuple[str, ...]
    purposes: tuple[str, ...] = ()
    changes: bool = False
    request_schema: Mapping[str, JsonValue] | None = None
    response_schema: Mapping[str, JsonValue] | None = None
    re_serves: str | None = None
    """A service id (versioned or not) whose data this service passes on: the provider node
    refuses to serve it about a subject whose data it received from that service under "no
    onward transfer" and has not deleted (docs/protocol.md, "Usage terms")."""
    event_of: str | None = None
    """For a change event (docs/protocol.md §9): the service id of the change service whose
    successful calls it publishes; such a service is served by the node (subscriptions), never by
    an adapter."""


@dataclass(frozen=True, slots=True)
class AdapterRequest:
    """A verified, policy-checked request handed to a registry adapter."""

    service: ServiceId
    client: ClientId
    method: str
    path: str
    query: str
    subject: str | None
    purpose: str
    message_id: str
    fields: frozenset[str]
    body: bytes = b""
    content_type: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class AdapterResponse:
    """An adapter's answer. ``data`` is filtered to the allowed fields by the node, not trusted."""

    status: int
    data: JsonValue


@runtime_checkable
class RegistryAdapter(Protocol):
    """Puts one subsystem's registry behind a node."""

    def services(self) -> Sequence[ServiceDescription]: ...

    async def call(self, request: AdapterRequest) -> AdapterResponse: ...


# --- subjects ----------------------------------------------------------------------------------


class SubjectTranslator(Protocol):
    """Maps a citizen's pseudonym at one agency to their pseudonym at another (機関別符号).

    Agencies are subsystem ids (and ``CITIZEN_AGENCY`` for the citizen's own platform identity,
    the ``sub`` of their token). Raises ``NotFoundError`` for an unknown pseudonym. No master
    identifier ever crosses this port.
    """

    def translate(self, subject: str, *, from_agency: str, to_agency: str) -> str: ...


CITIZEN_AGENCY = "citizen"


@dataclass(frozen=True, slots=True)
class SubjectTokenRequest:
    """A consumer node's question to the pseudonym translator (docs/pseudonyms.md).

    ``subject`` is the consumer agency's own code for the citizen; ``citizen`` asks for the
    citizen's platform identity too (only when the request relies on a consent)."""

    client: ClientId
    subject: str
    service: ServiceId
    citizen: bool
    message_id: str


class SubjectSealer(Protocol):
    """The provider's code for a citizen, sealed to the provider by the central translator.

    Returns an opaque token (``exchange.subject_token``) the consumer cannot read. Raises
    ``RefusalError`` without an access right, ``NotFoundError`` for an unknown code and
    ``TransportError`` when the translator cannot be reached (fail closed)."""

    async def seal_subject(self, request: SubjectTokenRequest) -> str: ...


# --- transport ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Node-to-node HTTP. Raises ``TransportError`` when the peer cannot be reached."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> TransportResponse: ...

    async def get(
        self, url: str, headers: Mapping[str, str], *, timeout_s: float
    ) -> TransportResponse: ...

    async def aclose(self) -> None: ...
