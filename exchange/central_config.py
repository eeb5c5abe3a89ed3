"""The central registry ("global configuration"), as a signed document (DESIGN "Trust").

The central server publishes one JSON document: the instance CA, members and their node
addresses, subsystems and their signing certificates, the services each subsystem offers, the
access rights, statutory bases, revoked certificates, and where the consent service lives. It is
signed by the central server's key (detached JWS over RFC 8785 canonical JSON) and carries a serial
number and an expiry. Every node verifies it against its trust anchor (the central public key,
obtained out of band by ``onceonly keys init``), refuses an expired one or one older than what it
already holds (rollback), and caches the last good copy.

Trust assumption: nothing in the document is trusted before ``verify_registry`` returns.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.canonical import canonical_json
from exchange.certificates import load_certificate, verify_member_certificate
from exchange.errors import ClientError, ConfigurationError, NotFoundError, VerificationError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.sealing import SealingPublicKey
from exchange.signing import (
    CentralSigner,
    CentralVerifier,
    MemberVerifier,
    PublicKey,
    TranslatorVerifier,
    key_id,
    public_key_from_pem,
)

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "MAX_RESTRICTED_DAYS",
    "MAX_RETENTION_DAYS",
    "AccessRightEntry",
    "ConsentServiceEntry",
    "MemberEntry",
    "RegistryDocument",
    "Restriction",
    "ServiceEntry",
    "SignedRegistry",
    "StatuteEntry",
    "SubsystemEntry",
    "TranslatorEntry",
    "VerifiedRegistry",
    "parse_unverified_registry",
    "sign_registry",
    "verify_registry",
]

MAX_REGISTRY_BYTES = 8 * 1024 * 1024
MAX_RESTRICTED_DAYS = 36_500
"""The longest a restricted statute may keep an exchange from its citizen's view (100 years)."""
MAX_RETENTION_DAYS = 36_500
DEFAULT_RETENTION_DAYS = 365
"""The delete-by date of data received on a statute that names no retention (docs/protocol.md)."""


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemberEntry(_Wire):
    id: str
    name: str
    name_en: str = ""
    address: str | None = None
    """Base URL of the member's node ("security server"); None for a member without one."""


class SubsystemEntry(_Wire):
    id: str
    name: str = ""
    certificates: tuple[str, ...] = ()
    seal_key: str | None = None
    """The subsystem's X25519 sealing public key (base64url): the pseudonym translator seals the
    subsystem's own code for a citizen to it (docs/pseudonyms.md)."""


class ServiceEntry(_Wire):
    id: str
    description: str = ""
    fields: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    changes: bool = False
    openapi: dict[str, Any] | None = None
    event_of: str | None = Field(default=None, exclude_if=lambda v: v is None)
    """A change event (docs/protocol.md §9): the id of the change service whose successful calls
    it publishes. Left out when None, so documents signed before it existed keep their form."""


class AccessRightEntry(_Wire):
    client: str
    service: str
    not_before: datetime | None = None
    not_after: datetime | None = None


class StatuteEntry(_Wire):
    """A statutory basis: this client may get these fields of this service for these purposes."""

    id: str
    service: str
    client: str
    purposes: tuple[str, ...]
    fields: tuple[str, ...]
    ordinance: str
    title_ja: str = ""
    title_en: str = ""
    restricted_days: int | None = Field(
        default=None, ge=1, le=MAX_RESTRICTED_DAYS, exclude_if=lambda v: v is None
    )
    """A *restricted* statute (law-enforcement or covert queries, Estonia's model): an exchange
    on this basis is kept from its citizen's view for this many days (docs/audit.md,
    "Restricted entries"). Left out of the document when None, so that documents signed before
    the field existed keep their canonical form (and their signatures)."""
    retention_days: int | None = Field(
        default=None, ge=0, le=MAX_RETENTION_DAYS, exclude_if=lambda v: v is None
    )
    """How long a recipient may keep data received on this basis (the delete-by date of the
    response's usage terms); ``DEFAULT_RETENTION_DAYS`` when None. Left out when None."""
    onward_transfer: bool = Field(default=False, exclude_if=lambda v: not v)
    """Whether the recipient may pass data received on this basis on to another agency.
    Left out when False (the default), for the same reason."""


@dataclass(frozen=True, slots=True)
class Restriction:
    """An exchange falls under a restricted statute: its audit entries are restricted until
    ``until``; ``basis`` is the statute as decisions and entries name it."""

    statute: StatuteEntry
    until: datetime

    @property
    def basis(self) -> str:
        return f"statute:{self.statute.ordinance}"


class ConsentServiceEntry(_Wire):
    url: str
    issuer_public_key: str


class TranslatorEntry(_Wire):
    """The central pseudonym translator: where consumer nodes ask, and the key its tokens carry."""

    url: str
    public_key: str


class RegistryDocument(_Wire):
    instance: str
    serial: int = Field(ge=1)
    issued_at: datetime
    expires_at: datetime
    ca_certificate: str
    central_url: str = ""
    members: tuple[MemberEntry, ...] = ()
    subsystems: tuple[SubsystemEntry, ...] = ()
    services: tuple[ServiceEntry, ...] = ()
    access_rights: tuple[AccessRightEntry, ...] = ()
    statutes: tuple[StatuteEntry, ...] = ()
    revoked_certificates: tuple[str, ...] = ()
    consent_service: ConsentServiceEntry | None = None
    translator: TranslatorEntry | None = None

    def signing_input(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


class SignedRegistry(_Wire):
    document: RegistryDocument
    signature: str

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False).encode()


def sign_registry(document: RegistryDocument, signer: CentralSigner) -> SignedRegistry:
    return SignedRegistry(
        document=document, signature=signer.sign_detached(document.signing_input())
    )


def parse_unverified_registry(raw: bytes) -> SignedRegistry:
    if len(raw) > MAX_REGISTRY_BYTES:
        raise VerificationError("registry document too large")
    try:
        return SignedRegistry.model_validate_json(raw)
    except ValidationError as exc:
        raise VerificationError("malformed registry document") from exc


def verify_registry(
    raw: bytes,
    anchor: CentralVerifier,
    *,
    now: datetime,
    min_serial: int = 0,
) -> VerifiedRegistry:
    """Verify a fetched registry: (R1) signature by the anchor, (R2) not expired, (R3) no rollback."""
    signed = parse_unverified_registry(raw)
    # (R1) signed by the central server: stops a forged directory (fake members, fake keys).
    anchor.verify_detached(signed.signature, signed.document.signing_input())
    doc = signed.document
    # (R2) expiry: stops a node from running forever on a stale directory (revocations unseen).
    if doc.expires_at <= now:
        raise ConfigurationError(
            "the central registry has expired", code="Server.ServerProxy.OutdatedGlobalConf"
        )
    # (R3) monotonic serial: stops an attacker replaying an older directory to undo a revocation.
    if doc.serial < min_serial:
        raise VerificationError("registry serial went backwards")
    return VerifiedRegistry(doc, raw)


@dataclass(eq=False)
class VerifiedRegistry:
    """Lookups over a verified registry document. Member keys are verified lazily and cached."""

    document: RegistryDocument
    raw: bytes = b""
    _key_cache: dict[tuple[str, str], tuple[MemberVerifier, datetime]] = field(default_factory=dict)

    @property
    def serial(self) -> int:
        return self.document.serial

    @cached_property
    def _members(self) -> dict[str, MemberEntry]:
        return {m.id: m for m in self.document.members}

    @cached_property
    def _subsystems(self) -> dict[str, SubsystemEntry]:
        return {s.id: s for s in self.document.subsystems}

    @cached_property
    def _services(self) -> dict[str, ServiceEntry]:
        return {s.id: s for s in self.document.services}

    @cached_property
    def _rights(self) -> dict[str, list[AccessRightEntry]]:
        out: dict[str, list[AccessRightEntry]] = {}
        for r in self.document.access_rights:
            out.setdefault(r.service, []).append(r)
        return out

    @cached_property
    def _statutes(self) -> dict[str, list[StatuteEntry]]:
        """Statutes by unversioned service, sorted by ordinance (as ``policies.data`` sorts
        them, so that "the first that applies" is the statute the policy decides on)."""
        out: dict[str, list[StatuteEntry]] = {}
        for t in sorted(self.document.statutes, key=lambda t: t.ordinance):
            with contextlib.suppress(ValueError):
                out.setdefault(str(ServiceId.parse(t.service).unversioned), []).append(t)
        return out

    @cached_property
    def _revoked(self) -> frozenset[str]:
        return frozenset(self.document.revoked_certificates)

    @cached_property
    def _ca(self) -> Any:
        return load_certificate(self.document.ca_certificate)

    def member(self, member: MemberId) -> MemberEntry:
        try:
            return self._members[str(member)]
        except KeyError:
            raise NotFoundError(
                f"unknown member {member}", code="Server.ServerProxy.UnknownMember"
            ) from None

    def has_subsystem(self, client: ClientId) -> bool:
        return str(client) in self._subsystems

    def service(self, service: ServiceId) -> ServiceEntry:
        try:
            return self._services[str(service)]
        except KeyError:
            raise NotFoundError(
                f"unknown service {service}", code="Server.ServerProxy.UnknownService"
            ) from None

    def find_service(
        self, provider: ClientId, code: str, version: str | None
    ) -> ServiceEntry | None:
        return self._services.get(str(ServiceId(provider, code, version)))

    def lacks(self, services: Sequence[str], fields: Sequence[str]) -> list[str]:
        """What a request naming ``services`` and ``fields`` asks for that this registry does not
        have: a service (an id without a version stands for any version of it), or a field none
        of the named services carries. Empty when everything is known."""
        missing: list[str] = []
        known: set[str] = set()
        for sid in services:
            found = self._versions_of(sid)
            if not found:
                missing.append(f"service {sid[:300]}")
            for s in found:
                known.update(s.fields)
        extra = sorted(set(fields) - known) if not missing else []
        if extra:
            missing.append(f"field {', '.join(extra)} in the services named")
        return missing

    def _versions_of(self, sid: str) -> list[ServiceEntry]:
        try:
            wanted = ServiceId.parse(sid)
        except ClientError:
            return []
        if wanted.version is not None:
            entry = self._services.get(str(wanted))
            return [entry] if entry is not None else []
        prefix = f"{wanted}/"
        return [
            s
            for k, s in self._services.items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]

    def events_of(self, change: ServiceId) -> list[ServiceEntry]:
        """The change events published by calls of ``change`` (docs/protocol.md §9)."""
        key = str(change)
        return [s for s in self._services.values() if s.event_of is not None and s.event_of == key]

    def services_of(self, provider: ClientId) -> list[ServiceEntry]:
        prefix = f"{provider}/"
        return [s for s in self.document.services if s.id.startswith(prefix)]

    def clients(self) -> list[SubsystemEntry]:
        return list(self.document.subsystems)

    def node_address(self, member: MemberId) -> str:
        address = self.member(member).address
        if not address:
            raise ConfigurationError(
                f"member {member} has no node address", code="Server.ServerProxy.UnknownMember"
            )
        return address.rstrip("/")

    def access_right(
        self, client: ClientId, service: ServiceId, *, now: datetime
    ) -> AccessRightEntry | None:
        """The access right letting ``client`` call ``service`` (versioned or not), if any."""
        for key in {str(service), str(service.unversioned)}:
            for right in self._rights.get(key, ()):
                if right.client != str(client):
                    continue
                if right.not_before and now < right.not_before:
                    continue
                if right.not_after and now > right.not_after:
                    continue
                return right
        return None

    def restriction(
        self, client: ClientId, service: ServiceId, purpose: str, *, now: datetime
    ) -> Restriction | None:
        """Whether an exchange of ``client`` with ``service`` for ``purpose`` is restricted: the
        statute the policy decides on — the first, by ordinance, naming this client, service and
        purpose — is restricted. Both nodes of an exchange decide it alike, from the verified
        registry, before anything of the exchange is recorded."""
        for statute in self._statutes.get(str(service.unversioned), ()):
            if statute.client == str(client) and purpose in statute.purposes:
                if statute.restricted_days is None:
                    return None
                return Restriction(statute, now + timedelta(days=statute.restricted_days))
        return None

    def statute_for(
        self, client: ClientId, service: ServiceId, purpose: str
    ) -> StatuteEntry | None:
        """The statute the policy decides on for this exchange, if any (as ``restriction``)."""
        for statute in self._statutes.get(str(service.unversioned), ()):
            if statute.client == str(client) and purpose in statute.purposes:
                return statute
        return None

    def allowed_services(self, client: ClientId, *, now: datetime) -> list[ServiceEntry]:
        return [
            s
            for s in self.document.services
            if self.access_right(client, ServiceId.parse(s.id), now=now) is not None
        ]

    def member_verifier(self, client: ClientId, kid: str, *, now: datetime) -> MemberVerifier:
        """The verifier for ``client``'s certificate with key id ``kid`` (steps 4a–4d)."""
        cache_key = (str(client), kid)
        cached = self._key_cache.get(cache_key)
        if cached is not None and now <= cached[1]:
            return cached[0]
        entry = self._subsystems.get(str(client))
        if entry is None:
            raise VerificationError("unknown sender")
        for pem in entry.certificates:
            cert = load_certificate(pem)
            key: PublicKey = cert.public_key()  # type: ignore[assignment]
            if key_id(key) != kid:
                continue
            verified = verify_member_certificate(
                cert, self._ca, subsystem=client, revoked_serials=self._revoked, now=now
            )
            verifier = MemberVerifier(verified)
            # Cached within this registry version only (a new registry brings new revocations),
            # and never past the certificate's expiry.
            self._key_cache[cache_key] = (verifier, cert.not_valid_after_utc)
            return verifier
        raise VerificationError("no certificate for this key")

    @cached_property
    def translator_verifier(self) -> TranslatorVerifier:
        """The translator's token key, as the verified registry names it (fail closed if none)."""
        entry = self.document.translator
        if entry is None:
            raise ConfigurationError(
                "the central registry names no pseudonym translator",
                code="Server.ServerProxy.NoTranslator",
            )
        return TranslatorVerifier(public_key_from_pem(entry.public_key))

    def seal_key(self, client: ClientId) -> SealingPublicKey:
        """``client``'s sealing public key from the verified registry (fail closed if none)."""
        entry = self._subsystems.get(str(client))
        if entry is None or entry.seal_key is None:
            raise ConfigurationError(
                f"no sealing key for {client} in the central registry",
                code="Server.ServerProxy.NoSealingKey",
            )
        return SealingPublicKey.parse(entry.seal_key)
