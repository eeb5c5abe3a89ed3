"""Mandates: who may act for whom at the consent service (issue 16, items 3-4; docs/consent.md).

A mandate names a representative and a represented person (both by their subject at the consent
service), a kind — ``parent`` (statutory, a parent of a minor), ``guardian`` (a registered
成年後見人) or ``authorised`` (a person the represented person authorised) —, a scope (consent
purpose codes and procedure names, ``*`` for all), a validity window and, once revoked, when and
by whom. Each is signed by the consent service's key as a compact JWS (header ``typ``
``onceonly-mandate+jws``), like consent artefacts, so a holder can prove it offline.

``authorise`` is the one check every "acting for" goes through: the mandate exists, names this
representative, is in force (not before, not after, not revoked) and covers the purpose or the
procedure. Every refusal is audited (subject: the represented person, when the mandate is known)
before it is raised, and every grant, registration and revocation is in the consent log.

Trust assumption: who a subject is was proven by the caller's token; a parent or guardian mandate
is registered by an operator from a registry or court record (``onceonly consent
register-mandate``), never granted by the representative themself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BeforeValidator, Field, model_validator
from sqlalchemy import Engine, or_, select
from sqlalchemy.orm import Session

from consent.artefact import MANDATE_TYP, ConsentIssuerKey
from consent.model import _Wire
from consent.store import MandateRow
from exchange.db import as_utc
from exchange.errors import ConflictError, NotFoundError, RefusalError
from exchange.ports import AuditEvent, AuditKind, AuditSink

__all__ = [
    "MANDATE_TYP",
    "Mandate",
    "MandateGrant",
    "MandateKind",
    "MandateRegistration",
    "MandateService",
    "MandateStatus",
    "MandateUse",
    "acting_actor",
]

MAX_SCOPE = 32
MAX_LIST = 200
ALL = "*"
REFUSED = "Client.MandateRefused"
"""The stable problem code of every refused "acting for" (403)."""

_Scope = Annotated[str, Field(pattern=r"^(?:[A-Za-z0-9_.\-]{1,64}|\*)$")]
"""A purpose code or procedure name (``NAME_PATTERN``), or ``*`` for all."""


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float):  # pydantic would read it as seconds since the epoch
        raise ValueError("a time is RFC 3339 text with a zone, not a number")
    return value


_Time = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]
"""RFC 3339 text with a zone (what the schema says); a number is refused."""
_Subject = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]


class MandateKind(StrEnum):
    PARENT = "parent"
    GUARDIAN = "guardian"
    AUTHORISED = "authorised"

    @property
    def party_class(self) -> str:
        """The class in ``X-Road-Represented-Party: CLASS/<mandate id>``."""
        return self.value.upper()


class MandateStatus(StrEnum):
    ACTIVE = "active"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


class _Scoped(_Wire):
    purposes: tuple[_Scope, ...] = Field(min_length=1, max_length=MAX_SCOPE)
    """Consent purpose codes the representative may act on, ``*`` for every purpose."""
    procedures: tuple[_Scope, ...] = Field(default=(), max_length=MAX_SCOPE)
    """Procedures (``address-change``) the representative may start, ``*`` for every one."""
    valid_from: _Time | None = None
    valid_until: _Time

    @model_validator(mode="after")
    def _window(self) -> Any:
        if self.valid_from is not None and self.valid_from >= self.valid_until:
            raise ValueError("valid_from must be before valid_until")
        return self


class MandateGrant(_Scoped):
    """The represented person authorises someone (the only kind a person grants themself)."""

    representative: _Subject
    kind: Literal["authorised"] = "authorised"


class MandateRegistration(_Scoped):
    """An operator registers a statutory or court-appointed representation from a record."""

    representative: _Subject
    represented: _Subject
    kind: MandateKind
    basis: str = Field(min_length=1, max_length=300)
    """The record it rests on: a registry's household entry, a court's guardianship number."""


class MandateUse(_Wire):
    """What a representative is about to do under a mandate (``POST /mandates/{id}/authorise``)."""

    action: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9 _.\-]+$")
    purpose: _Scope | None = None
    procedure: _Scope | None = None


class Mandate(_Wire):
    id: str
    representative: str
    represented: str
    kind: MandateKind
    purposes: tuple[str, ...]
    procedures: tuple[str, ...]
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    basis: str
    granted_by: str
    created_at: AwareDatetime
    status: MandateStatus
    revoked_at: AwareDatetime | None = None
    revoked_by: str | None = None
    represented_party: str
    """The ``X-Road-Represented-Party`` value exchanges made under this mandate carry."""
    artefact: str
    """The signed mandate (compact JWS, ``typ`` ``onceonly-mandate+jws``)."""

    def covers(self, *, purpose: str | None = None, procedure: str | None = None) -> bool:
        if purpose is not None and ALL not in self.purposes and purpose not in self.purposes:
            return False
        return procedure is None or ALL in self.procedures or procedure in self.procedures


def acting_actor(mandate: Mandate) -> str:
    """What a consent's history records as its actor when a representative acted."""
    return f"{mandate.representative} for {mandate.represented} (mandate {mandate.id})"


def _status(row: MandateRow, now: datetime) -> MandateStatus:
    if row.revoked_at is not None and row.revoked_at <= now:
        return MandateStatus.REVOKED
    if now < row.valid_from:
        return MandateStatus.NOT_YET_VALID
    if now >= row.valid_until:
        return MandateStatus.EXPIRED
    return MandateStatus.ACTIVE


def _wire(row: MandateRow, now: datetime) -> Mandate:
    kind = MandateKind(row.kind)
    return Mandate(
        id=row.id,
        representative=row.representative,
        represented=row.represented,
        kind=kind,
        purposes=tuple(row.purposes),
        procedures=tuple(row.procedures),
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        basis=row.basis,
        granted_by=row.granted_by,
        created_at=row.created_at,
        status=_status(row, now),
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        represented_party=f"{kind.party_class}/{row.id}",
        artefact=row.artefact,
    )


class MandateService:
    """Grants, registers, revokes, lists and checks mandates (tables of the ``consent`` branch)."""

    def __init__(
        self,
        engine: Engine,
        *,
        issuer_key: ConsentIssuerKey,
        audit: AuditSink,
        node: str = "consent-service",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._engine = engine
        self._key = issuer_key
        self._audit = audit
        self._node = node
        self.clock = clock or (lambda: datetime.now(UTC))

    # --- signing -----------------------------------------------------------------------------

    def _sign(self, row: MandateRow) -> str:
        claims = {
            "iss": self._key.issuer,
            "mid": row.id,
            "representative": row.representative,
            "sub": row.represented,
            "kind": row.kind,
            "purposes": list(row.purposes),
            "procedures": list(row.procedures),
            "nbf": int(row.valid_from.timestamp()),
            "exp": int(row.valid_until.timestamp()),
            "iat": int(row.created_at.timestamp()),
            "basis": row.basis,
        }
        return self._key.sign_mandate(claims)

    def verify_artefact(self, artefact: str) -> dict[str, Any]:
        """The claims of a mandate this service signed, or one opaque ``VerificationError``."""
        return self._key.verify_mandate(artefact)

    # --- changes -----------------------------------------------------------------------------

    def _create(
        self,
        *,
        representative: str,
        represented: str,
        kind: MandateKind,
        scope: _Scoped,
        basis: str,
        granted_by: str,
        now: datetime,
    ) -> Mandate:
        now = as_utc(now)
        if representative == represented:
            raise ConflictError("a person cannot hold a mandate for themself")
        row = MandateRow(
            id=str(uuid.uuid4()),
            representative=representative,
            represented=represented,
            kind=kind.value,
            purposes=sorted(set(scope.purposes)),
            procedures=sorted(set(scope.procedures)),
            valid_from=scope.valid_from or now,
            valid_until=scope.valid_until,
            basis=basis,
            granted_by=granted_by,
            created_at=now,
            revoked_at=None,
            revoked_by=None,
            artefact="",
        )
        row.artefact = self._sign(row)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            session.add(row)
        self._record("mandate.granted", "info", row, now, actor=granted_by)
        return _wire(row, now)

    def grant(self, represented: str, grant: MandateGrant, *, now: datetime) -> Mandate:
        """The represented person authorises ``grant.representative`` (kind ``authorised``)."""
        return self._create(
            representative=grant.representative,
            represented=represented,
            kind=MandateKind.AUTHORISED,
            scope=grant,
            basis="granted by the represented person",
            granted_by=represented,
            now=now,
        )

    def register(self, registration: MandateRegistration, *, by: str, now: datetime) -> Mandate:
        """An operator (``by``) registers a parent's or guardian's mandate from a record."""
        return self._create(
            representative=registration.representative,
            represented=registration.represented,
            kind=registration.kind,
            scope=registration,
            basis=registration.basis,
            granted_by=f"operator:{by}",
            now=now,
        )

    def revoke(self, mandate_id: str, *, by: str, now: datetime, operator: bool = False) -> Mandate:
        """Revoked by the represented person (a mandate they granted), by the representative
        (renouncing it) or by an operator (``operator=True``); from ``now`` on, for good."""
        now = as_utc(now)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            row = (
                session.get(MandateRow, mandate_id, with_for_update=True)
                if _uuid(mandate_id)
                else None
            )
            if row is None:
                raise NotFoundError("no such mandate")
            may = operator or by == row.representative
            if by == row.represented:
                may = may or row.kind == MandateKind.AUTHORISED.value
            if not may:
                if by != row.represented:
                    raise NotFoundError("no such mandate")
                raise ConflictError(
                    "a parent's or guardian's mandate is revoked by the registry or the court "
                    "that recorded it, through an operator"
                )
            if row.revoked_at is not None:
                raise ConflictError("the mandate is already revoked")
            row.revoked_at = now
            row.revoked_by = f"operator:{by}" if operator else by
            session.flush()
            done = _wire(row, now)
        self._record("mandate.revoked", "info", row, now, actor=row.revoked_by or by)
        return done

    # --- reads -------------------------------------------------------------------------------

    def list_for(self, subject: str, *, now: datetime) -> list[Mandate]:
        """Mandates ``subject`` holds or is represented by (newest first)."""
        now = as_utc(now)
        with Session(self._engine, expire_on_commit=False) as session:
            rows = session.scalars(
                select(MandateRow)
                .where(or_(MandateRow.representative == subject, MandateRow.represented == subject))
                .order_by(MandateRow.created_at.desc(), MandateRow.id)
                .limit(MAX_LIST)
            ).all()
            return [_wire(r, now) for r in rows]

    def get(self, mandate_id: str, *, now: datetime) -> Mandate:
        """Any mandate by id (auditors and operators)."""
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(MandateRow, mandate_id) if _uuid(mandate_id) else None
            if row is None:
                raise NotFoundError("no such mandate")
            return _wire(row, as_utc(now))

    def authorise(
        self,
        representative: str,
        mandate_id: str,
        *,
        now: datetime,
        purpose: str | None = None,
        procedure: str | None = None,
        action: str,
    ) -> Mandate:
        """The mandate under which ``representative`` acts, or an audited ``RefusalError``
        (problem code ``Client.MandateRefused``): unknown or someone else's, not in force,
        revoked, or not covering ``purpose`` / ``procedure``."""
        now = as_utc(now)
        with Session(self._engine, expire_on_commit=False) as session:
            row = session.get(MandateRow, mandate_id) if _uuid(mandate_id) else None
            mandate = _wire(row, now) if row is not None else None
        if mandate is None or mandate.representative != representative:
            self._refuse(None, "no mandate of this representative has this id", now, action)
        assert mandate is not None
        if mandate.status is not MandateStatus.ACTIVE:
            self._refuse(mandate, f"the mandate is {mandate.status.value}", now, action)
        if not mandate.covers(purpose=purpose, procedure=procedure):
            what = f"purpose {purpose}" if purpose is not None else f"procedure {procedure}"
            self._refuse(mandate, f"the mandate does not cover {what}", now, action)
        return mandate

    # --- audit -------------------------------------------------------------------------------

    def _refuse(self, mandate: Mandate | None, reason: str, now: datetime, action: str) -> None:
        exc = RefusalError(f"acting for someone refused: {reason}", code=REFUSED, reasons=(reason,))
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="refusal",
                decision="deny",
                subject=mandate.represented if mandate else None,
                reason=f"{REFUSED}: {reason}"[:500],
                represented_party=mandate.represented_party if mandate else None,
                extra={"stage": "mandate", "action": action[:120]}
                | ({"mandate": mandate.id} if mandate else {}),
            )
        )
        exc.audited = True
        raise exc

    def _record(
        self,
        kind: AuditKind,
        decision: Literal["info"],
        row: MandateRow,
        now: datetime,
        *,
        actor: str,
    ) -> None:
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind=kind,
                decision=decision,
                subject=row.represented,
                reason=f"{row.kind} mandate, {row.basis}"[:500],
                represented_party=f"{MandateKind(row.kind).party_class}/{row.id}",
                extra={"mandate": row.id, "representative": row.representative, "actor": actor},
            )
        )


def _uuid(value: str) -> bool:
    try:
        return len(value) == 36 and str(uuid.UUID(value)) == value
    except ValueError:
        return False
