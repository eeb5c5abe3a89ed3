"""Managing the central registry (``onceonly registry …``) and building its signed document.

The central operator's tables are the source of truth; every change bumps the serial, and the
central server re-signs the document when the serial changes or the last copy nears its expiry.
Trust assumption: whoever can write the central database is the central operator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from exchange.central_config import (
    MAX_RESTRICTED_DAYS,
    MAX_RETENTION_DAYS,
    AccessRightEntry,
    ConsentServiceEntry,
    MemberEntry,
    RegistryDocument,
    ServiceEntry,
    SignedRegistry,
    StatuteEntry,
    SubsystemEntry,
    TranslatorEntry,
    sign_registry,
)
from exchange.certificates import certificate_info, load_certificate
from exchange.errors import ClientError, ConflictError, NotFoundError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.sealing import SealingPublicKey
from exchange.signing import CentralSigner, public_key_from_pem
from exchange.store import (
    AccessRightRow,
    CertificateRow,
    MemberRow,
    RegistryMetaRow,
    ServiceRow,
    StatuteRow,
    SubsystemRow,
)

__all__ = ["REGISTRY_VALIDITY", "RegistryAdmin"]


def _seal_meta_key(subsystem: str) -> str:
    """Sealing public keys live in the registry's key/value table, under a fixed-length key."""
    return "seal:" + hashlib.sha256(subsystem.encode()).hexdigest()[:40]


REGISTRY_VALIDITY = timedelta(seconds=600)
"""How long a signed registry stays valid (X-Road's default for global configuration)."""


class RegistryAdmin:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- changes (each bumps the serial) ---------------------------------------------------------

    def _bump(self, session: Session) -> None:
        row = session.get(RegistryMetaRow, "serial")
        if row is None:
            session.add(RegistryMetaRow(key="serial", value="1"))
        else:
            row.value = str(int(row.value) + 1)

    def add_member(
        self, member: MemberId, name: str, *, name_en: str = "", address: str | None = None
    ) -> None:
        with Session(self._engine) as s, s.begin():
            row = s.get(MemberRow, str(member))
            if row is None:
                s.add(MemberRow(id=str(member), name=name, name_en=name_en, address=address))
            else:
                row.name, row.name_en = name, name_en or row.name_en
                row.address = address if address is not None else row.address
            self._bump(s)

    def set_address(self, member: MemberId, address: str) -> None:
        with Session(self._engine) as s, s.begin():
            row = s.get(MemberRow, str(member))
            if row is None:
                raise NotFoundError(f"unknown member {member}")
            row.address = address
            self._bump(s)

    def add_subsystem(self, subsystem: ClientId, *, name: str = "") -> None:
        with Session(self._engine) as s, s.begin():
            if s.get(MemberRow, str(subsystem.member)) is None:
                raise NotFoundError(f"unknown member {subsystem.member}")
            row = s.get(SubsystemRow, str(subsystem))
            if row is None:
                s.add(SubsystemRow(id=str(subsystem), member_id=str(subsystem.member), name=name))
            elif name:
                row.name = name
            self._bump(s)

    def add_certificate(self, subsystem: ClientId, pem: str) -> str:
        info = certificate_info(load_certificate(pem))
        if info.subject != str(subsystem):
            raise ConflictError(f"certificate is issued to {info.subject}, not {subsystem}")
        with Session(self._engine) as s, s.begin():
            if s.get(SubsystemRow, str(subsystem)) is None:
                raise NotFoundError(f"unknown subsystem {subsystem}")
            if s.get(CertificateRow, info.fingerprint) is None:
                s.add(
                    CertificateRow(
                        fingerprint=info.fingerprint,
                        subsystem_id=str(subsystem),
                        serial=info.serial,
                        pem=pem,
                        not_after=info.not_after,
                        revoked=False,
                    )
                )
            self._bump(s)
        return info.fingerprint

    def revoke_certificate(self, fingerprint_or_serial: str) -> None:
        with Session(self._engine) as s, s.begin():
            rows = s.scalars(
                select(CertificateRow).where(
                    (CertificateRow.fingerprint == fingerprint_or_serial)
                    | (CertificateRow.serial == fingerprint_or_serial)
                )
            ).all()
            if not rows:
                raise NotFoundError("no such certificate")
            for row in rows:
                row.revoked = True
            self._bump(s)

    def add_service(
        self,
        service: ServiceId,
        *,
        description: str = "",
        fields: Iterable[str] = (),
        purposes: Iterable[str] = (),
        changes: bool = False,
        openapi: dict[str, object] | None = None,
        event_of: ServiceId | str | None = None,
    ) -> None:
        """``event_of``: the service is the change event of that change service (§9)."""
        with Session(self._engine) as s, s.begin():
            if s.get(SubsystemRow, str(service.provider)) is None:
                raise NotFoundError(f"unknown subsystem {service.provider}")
            row = s.get(ServiceRow, str(service))
            values = {
                "subsystem_id": str(service.provider),
                "description": description,
                "fields": list(fields),
                "purposes": list(purposes),
                "changes": changes,
                "openapi": openapi,
                "event_of": str(event_of) if event_of is not None else None,
            }
            if row is None:
                s.add(ServiceRow(id=str(service), **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
            self._bump(s)

    def grant(
        self,
        client: ClientId,
        service: ServiceId,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> None:
        with Session(self._engine) as s, s.begin():
            if s.get(SubsystemRow, str(client)) is None:
                raise NotFoundError(f"unknown client {client}")
            if s.get(ServiceRow, str(service)) is None:
                raise NotFoundError(f"unknown service {service}")
            row = s.get(AccessRightRow, (str(client), str(service)))
            if row is None:
                s.add(
                    AccessRightRow(
                        client_id=str(client),
                        service_id=str(service),
                        not_before=not_before,
                        not_after=not_after,
                    )
                )
            else:
                row.not_before, row.not_after = not_before, not_after
            self._bump(s)

    def revoke_right(self, client: ClientId, service: ServiceId) -> None:
        with Session(self._engine) as s, s.begin():
            row = s.get(AccessRightRow, (str(client), str(service)))
            if row is None:
                raise NotFoundError("no such access right")
            s.delete(row)
            self._bump(s)

    def add_statute(
        self,
        statute_id: str,
        *,
        service: ServiceId,
        client: ClientId,
        purposes: Iterable[str],
        fields: Iterable[str],
        ordinance: str,
        title_ja: str = "",
        title_en: str = "",
        restricted_days: int | None = None,
        retention_days: int | None = None,
        onward_transfer: bool = False,
    ) -> None:
        """Add or replace a statutory basis; ``restricted_days`` makes it a restricted statute
        (its exchanges are kept from the citizen's view that long; docs/audit.md);
        ``retention_days`` and ``onward_transfer`` are the usage terms of data received on it
        (docs/protocol.md, "Usage terms")."""
        if restricted_days is not None and not 1 <= restricted_days <= MAX_RESTRICTED_DAYS:
            raise ClientError(f"restricted days must be between 1 and {MAX_RESTRICTED_DAYS}")
        if retention_days is not None and not 0 <= retention_days <= MAX_RETENTION_DAYS:
            raise ClientError(f"retention days must be between 0 and {MAX_RETENTION_DAYS}")
        with Session(self._engine) as s, s.begin():
            row = s.get(StatuteRow, statute_id)
            values = {
                "service_id": str(service),
                "client_id": str(client),
                "purposes": list(purposes),
                "fields": list(fields),
                "ordinance": ordinance,
                "title_ja": title_ja,
                "title_en": title_en,
                "restricted_days": restricted_days,
                "retention_days": retention_days,
                "onward_transfer": onward_transfer,
            }
            if row is None:
                s.add(StatuteRow(id=statute_id, **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
            self._bump(s)

    def set_consent_service(self, url: str, issuer_public_key_pem: str) -> None:
        with Session(self._engine) as s, s.begin():
            for key, value in (("consent_url", url), ("consent_key", issuer_public_key_pem)):
                row = s.get(RegistryMetaRow, key)
                if row is None:
                    s.add(RegistryMetaRow(key=key, value=value))
                else:
                    row.value = value
            self._bump(s)

    def set_seal_key(self, subsystem: ClientId, seal_key: SealingPublicKey) -> None:
        """Publish the subsystem's sealing public key (the translator seals its codes to it)."""
        self._set_meta(_seal_meta_key(str(subsystem)), str(seal_key), must_exist=subsystem)

    def set_translator(self, url: str, public_key_pem: str) -> None:
        """Name the pseudonym translator and its token key (docs/pseudonyms.md)."""
        public_key_from_pem(public_key_pem)  # refuse what nobody could verify with
        with Session(self._engine) as s, s.begin():
            for key, value in (("translator_url", url), ("translator_key", public_key_pem)):
                self._put(s, key, value)
            self._bump(s)

    def _set_meta(self, key: str, value: str, *, must_exist: ClientId) -> None:
        with Session(self._engine) as s, s.begin():
            if s.get(SubsystemRow, str(must_exist)) is None:
                raise NotFoundError(f"unknown subsystem {must_exist}")
            self._put(s, key, value)
            self._bump(s)

    @staticmethod
    def _put(session: Session, key: str, value: str) -> None:
        row = session.get(RegistryMetaRow, key)
        if row is None:
            session.add(RegistryMetaRow(key=key, value=value))
        else:
            row.value = value

    # -- reading ---------------------------------------------------------------------------------

    def serial(self) -> int:
        with Session(self._engine) as s:
            row = s.get(RegistryMetaRow, "serial")
            return int(row.value) if row else 0

    def document(
        self, *, instance: str, ca_pem: str, central_url: str, now: datetime
    ) -> RegistryDocument:
        with Session(self._engine) as s:
            meta = {r.key: r.value for r in s.scalars(select(RegistryMetaRow))}
            certs: dict[str, list[str]] = {}
            revoked: list[str] = []
            for c in s.scalars(select(CertificateRow).order_by(CertificateRow.fingerprint)):
                if c.revoked:
                    revoked.append(c.serial)
                else:
                    certs.setdefault(c.subsystem_id, []).append(c.pem)
            consent = None
            if "consent_url" in meta and "consent_key" in meta:
                consent = ConsentServiceEntry(
                    url=meta["consent_url"], issuer_public_key=meta["consent_key"]
                )
            translator = None
            if "translator_url" in meta and "translator_key" in meta:
                translator = TranslatorEntry(
                    url=meta["translator_url"], public_key=meta["translator_key"]
                )
            return RegistryDocument(
                instance=instance,
                serial=max(1, int(meta.get("serial", "1"))),
                issued_at=now,
                expires_at=now + REGISTRY_VALIDITY,
                ca_certificate=ca_pem,
                central_url=central_url,
                members=tuple(
                    MemberEntry(id=m.id, name=m.name, name_en=m.name_en, address=m.address)
                    for m in s.scalars(select(MemberRow).order_by(MemberRow.id))
                ),
                subsystems=tuple(
                    SubsystemEntry(
                        id=x.id,
                        name=x.name,
                        certificates=tuple(certs.get(x.id, ())),
                        seal_key=meta.get(_seal_meta_key(x.id)),
                    )
                    for x in s.scalars(select(SubsystemRow).order_by(SubsystemRow.id))
                ),
                services=tuple(
                    ServiceEntry(
                        id=x.id,
                        description=x.description,
                        fields=tuple(x.fields),
                        purposes=tuple(x.purposes),
                        changes=x.changes,
                        openapi=x.openapi,
                        event_of=x.event_of,
                    )
                    for x in s.scalars(select(ServiceRow).order_by(ServiceRow.id))
                ),
                access_rights=tuple(
                    AccessRightEntry(
                        client=r.client_id,
                        service=r.service_id,
                        not_before=r.not_before,
                        not_after=r.not_after,
                    )
                    for r in s.scalars(
                        select(AccessRightRow).order_by(
                            AccessRightRow.service_id, AccessRightRow.client_id
                        )
                    )
                ),
                statutes=tuple(
                    StatuteEntry(
                        id=t.id,
                        service=t.service_id,
                        client=t.client_id,
                        purposes=tuple(t.purposes),
                        fields=tuple(t.fields),
                        ordinance=t.ordinance,
                        title_ja=t.title_ja,
                        title_en=t.title_en,
                        restricted_days=t.restricted_days,
                        retention_days=t.retention_days,
                        onward_transfer=bool(t.onward_transfer),
                    )
                    for t in s.scalars(select(StatuteRow).order_by(StatuteRow.id))
                ),
                revoked_certificates=tuple(sorted(revoked)),
                consent_service=consent,
                translator=translator,
            )

    def publish(
        self, signer: CentralSigner, *, instance: str, ca_pem: str, central_url: str, now: datetime
    ) -> SignedRegistry:
        return sign_registry(
            self.document(instance=instance, ca_pem=ca_pem, central_url=central_url, now=now),
            signer,
        )
