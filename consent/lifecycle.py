"""The consent lifecycle and the consent gate: ``ConsentService``.

Issue 5 "The consent" and "API". A consumer asks (``create_request``); the citizen approves
(→ a consent is granted and its signed artefact issued) or declines; the citizen pauses, resumes
and revokes; expiry and one-time spending happen by themselves. Every grant and change adds a
history event and a signed receipt and yields an ``AuditEvent`` through the injected ``AuditSink`` in the
same transaction (if the audit cannot be written, the change does not happen: fail closed).

State machine (anything else raises ``ConflictError`` naming the consent and its status)::

    request: pending ──approve──▶ approved (+ consent)     pending ──decline──▶ declined
             pending ──(age / window over)──▶ expired
    consent: active ──pause──▶ paused ──resume──▶ active
             active|paused ──revoke──▶ revoked
             active|paused ──(now ≥ valid_until)──▶ expired
             active ──(one-time used / max_uses reached)──▶ spent

Status is derived at ``now`` and persisted when observed (citizen reads, transitions, ``use``).

Trust assumptions: ``subject`` arguments come from a verified citizen token; a citizen can only
ever see or change their own consents — anything else is ``NotFoundError`` with the same words as
an unknown id (no existence oracle). The gate (``check``/``use``, the ``exchange.ports.ConsentGate``
port) trusts the query's client, service and message id (the node verified the envelope) but
verifies the artefact itself and reads the store on every call: no cache, so revocation wins at
the next request. Gate steps:

1. artefact: signature, issuer key, type (``consent.artefact``) — stops forged or altered consents;
2. the artefact names this consent id — stops presenting another consent's artefact;
3. the store knows the consent — stops artefacts of deleted/foreign stores;
4. status is active at ``now`` — revocation, pause, expiry and spending win over the artefact;
5. scope: window, subject, purpose, client, service, fields ⊆ consented — purpose creep, data
   grabs, other consumers riding on a consent;
6. (``use`` only) count and frequency limits of standing consents, then the use is recorded and a
   one-time consent spent, atomically (row lock on PostgreSQL, compare-and-set everywhere).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection, Engine, delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from consent._match import scope_mismatch
from consent.artefact import (
    ConsentArtefactClaims,
    ConsentArtefactVerifier,
    ConsentIssuerKey,
    ConsentReceiptVerifier,
)
from consent.events import ConsentEvents
from consent.iso27560 import RecordEvent
from consent.mandates import MandateService
from consent.model import (
    Consent,
    ConsentHistoryEvent,
    ConsentMode,
    ConsentRequest,
    ConsentRequestInput,
    ConsentRequestStatus,
    ConsentStatus,
    ConsentUse,
    HistoryAction,
    Purpose,
    Receipt,
)
from consent.receipt import ReceiptContext, build_receipt
from consent.store import (
    ConsentHistoryRow,
    ConsentReceiptRow,
    ConsentRequestRow,
    ConsentRow,
    ConsentUseRow,
    SeenRequestRow,
)
from exchange.errors import (
    ClientError,
    ConflictError,
    NotFoundError,
    OnceOnlyError,
    RefusalError,
    ReplayError,
    VerificationError,
)
from exchange.identifiers import ClientId
from exchange.ports import AuditEvent, AuditKind, AuditSink, ConsentDecision, ConsentQuery

__all__ = ["MAX_REQUEST_PENDING_S", "ConsentService", "utc_now"]

MAX_REQUEST_PENDING_S = 30 * 24 * 3600
"""A request the citizen has not answered in 30 days expires."""
MAX_LIST = 500
SEEN_PRUNE_INTERVAL_S = 60
"""How often the ids of signed requests whose time window has closed are deleted."""
_NO_CONSENT = "no such consent"
_NO_REQUEST = "no such consent request"
_NO_RECEIPT = "no such receipt"
_SYSTEM = "system"

_CHECK_COLUMNS = select(
    ConsentRow.id,
    ConsentRow.status,
    ConsentRow.subject,
    ConsentRow.client,
    ConsentRow.services,
    ConsentRow.purpose_code,
    ConsentRow.fields,
    ConsentRow.valid_from,
    ConsentRow.valid_until,
    ConsentRow.data_retention_days,
)


def _prior_use(db: Connection | Session, query: ConsentQuery) -> str | None:
    """The message id of an earlier use of this consent by the same client and service under
    the query's Idempotency-Key (a retry after a lost answer), or None."""
    if not query.idempotency_key:
        return None
    found: str | None = db.execute(
        select(ConsentUseRow.message_id)
        .where(
            ConsentUseRow.consent_id == query.consent_id,
            ConsentUseRow.idempotency_key == query.idempotency_key,
            ConsentUseRow.client == str(query.client),
            ConsentUseRow.service == str(query.service),
        )
        .limit(1)
    ).scalar_one_or_none()
    return found


_AUDIT_KIND: dict[HistoryAction, AuditKind] = {
    HistoryAction.GRANTED: "consent.granted",
    HistoryAction.PAUSED: "consent.paused",
    HistoryAction.RESUMED: "consent.resumed",
    HistoryAction.REVOKED: "consent.revoked",
    HistoryAction.EXPIRED: "consent.expired",
    HistoryAction.SPENT: "consent.used",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


class _ScopeRow(Protocol):
    """What the gate reads of a consent: an ORM row, or a Core row on the fast ``check`` path."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def data_retention_days(self) -> int: ...
    @property
    def client(self) -> str: ...
    @property
    def services(self) -> list[str]: ...
    @property
    def purpose_code(self) -> str: ...
    @property
    def fields(self) -> list[str]: ...
    @property
    def valid_from(self) -> datetime: ...
    @property
    def valid_until(self) -> datetime: ...


def effective_status(row: _ScopeRow, now: datetime) -> ConsentStatus:
    """The status at ``now``: expiry happens by itself; final states stay final."""
    status = ConsentStatus(row.status)
    if status in (ConsentStatus.REVOKED, ConsentStatus.EXPIRED, ConsentStatus.SPENT):
        return status
    if now >= row.valid_until:
        return ConsentStatus.EXPIRED
    return status


def _request_status(row: ConsentRequestRow, now: datetime) -> ConsentRequestStatus:
    status = ConsentRequestStatus(row.status)
    if status is not ConsentRequestStatus.PENDING:
        return status
    if now >= row.valid_until or now >= row.created_at + timedelta(seconds=MAX_REQUEST_PENDING_S):
        return ConsentRequestStatus.EXPIRED
    return status


# Why a transition is illegal, by (verb, current status): precise words for ConflictError.
_ILLEGAL: dict[tuple[str, ConsentStatus], str] = {
    ("pause", ConsentStatus.PAUSED): "is already paused",
    ("resume", ConsentStatus.ACTIVE): "is not paused (it is active)",
    ("revoke", ConsentStatus.REVOKED): "is already revoked",
    ("pause", ConsentStatus.REVOKED): "is revoked; a revoked consent cannot be paused",
    ("resume", ConsentStatus.REVOKED): (
        "is revoked; a revoked consent cannot be resumed (the consumer must ask again)"
    ),
}
_TRANSITIONS: dict[str, tuple[frozenset[ConsentStatus], ConsentStatus, HistoryAction]] = {
    "pause": (frozenset({ConsentStatus.ACTIVE}), ConsentStatus.PAUSED, HistoryAction.PAUSED),
    "resume": (frozenset({ConsentStatus.PAUSED}), ConsentStatus.ACTIVE, HistoryAction.RESUMED),
    "revoke": (
        frozenset({ConsentStatus.ACTIVE, ConsentStatus.PAUSED}),
        ConsentStatus.REVOKED,
        HistoryAction.REVOKED,
    ),
}


def _illegal(verb: str, consent_id: str, status: ConsentStatus) -> ConflictError:
    why = _ILLEGAL.get((verb, status))
    if why is None:
        why = f"is {status.value}; an {status.value} consent can no longer be {verb}d"
    return ConflictError(f"cannot {verb} consent {consent_id}: it {why}", code="Client.Conflict")


def _purpose(row: ConsentRow | ConsentRequestRow) -> Purpose:
    return Purpose(code=row.purpose_code, text_ja=row.purpose_ja, text_en=row.purpose_en)


def _terms(row: ConsentRow | ConsentRequestRow) -> dict[str, object]:
    return {
        "subject": row.subject,
        "client": row.client,
        "services": tuple(row.services),
        "purpose": _purpose(row),
        "fields": tuple(row.fields),
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
        "mode": ConsentMode(row.mode),
        "max_uses": row.max_uses,
        "min_interval_s": row.min_interval_s,
        "data_retention_days": row.data_retention_days,
        "legal_text_version": row.legal_text_version,
    }


def _consent(row: ConsentRow, status: ConsentStatus) -> Consent:
    return Consent.model_validate(
        {
            **_terms(row),
            "id": row.id,
            "status": status,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "use_count": row.use_count,
            "last_used_at": row.last_used_at,
            "request_id": row.request_id,
            "artefact": row.artefact,
        }
    )


def _request(row: ConsentRequestRow, status: ConsentRequestStatus) -> ConsentRequest:
    return ConsentRequest.model_validate(
        {
            **_terms(row),
            "id": row.id,
            "status": status,
            "created_at": row.created_at,
            "decided_at": row.decided_at,
            "consent_id": row.consent_id,
        }
    )


def _deny(consent_id: str, reason: str) -> ConsentDecision:
    return ConsentDecision(
        allow=False, consent_id=consent_id, fields=frozenset(), reasons=(reason,)
    )


@dataclass(frozen=True, slots=True)
class OnBehalf:
    """A change a representative made under a checked mandate (``consent.mandates``)."""

    actor: str
    mandate_id: str
    represented_party: str


def _valid_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


class ConsentService:
    """The consent service ("information bank"): lifecycle, citizen views and the consent gate.

    Implements ``exchange.ports.ConsentGate``. ``clock`` is only used by callers that have no
    ``now`` of their own (the HTTP routes); every method takes ``now`` explicitly.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        issuer_key: ConsentIssuerKey,
        audit: AuditSink,
        node: str = "consent-service",
        receipts: ReceiptContext | None = None,
        require_artefact: bool = False,
        clock: Callable[[], datetime] = utc_now,
        events: ConsentEvents | None = None,
    ) -> None:
        """``events``: every status change also writes a status event to the nodes concerned,
        in the same transaction (``consent.events``)."""
        self._engine = engine
        self._events = events
        self._key = issuer_key
        self._verifier: ConsentArtefactVerifier = issuer_key.verifier()
        self._receipt_verifier = issuer_key.receipt_verifier()
        self._audit = audit
        self._node = node
        self._receipts = receipts or ReceiptContext()
        self._require_artefact = require_artefact
        self._postgres = engine.dialect.name == "postgresql"
        self._next_prune = datetime.min.replace(tzinfo=UTC)
        self.clock = clock

    @property
    def verifier(self) -> ConsentArtefactVerifier:
        return self._verifier

    def mandates(self) -> MandateService:
        """The mandates beside this service's consents: same database, key and log."""
        return MandateService(
            self._engine, issuer_key=self._key, audit=self._audit, node=self._node, clock=self.clock
        )

    @property
    def events(self) -> ConsentEvents | None:
        """The outbox of status events, when this service publishes them."""
        return self._events

    @property
    def receipt_verifier(self) -> ConsentReceiptVerifier:
        """Verifies this service's signed receipts; its ``jwks()`` is what the service publishes."""
        return self._receipt_verifier

    # --- callers' refusals and replays ---------------------------------------------------------

    def record_refusal(
        self, exc: OnceOnlyError, *, route: str, client: str | None, now: datetime
    ) -> None:
        """Audits a refusal of the HTTP API (``consent.api``): who (the verified caller, if any),
        which route (its template, so no id of the request), the code and why — never a subject
        or a body. Records ``exc`` once (``exc.audited``)."""
        if exc.audited:
            return
        self._audit.record(
            AuditEvent(
                time=_aware(now),
                node=self._node,
                kind="refusal",
                decision="deny",
                client=client,
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}"[:500],
                extra={"stage": "consent-api", "route": route[:255]},
            )
        )
        exc.audited = True

    def remember_request(self, request_id: str, valid_until: datetime, *, now: datetime) -> None:
        """Remembers a signed request that changes state until its signature expires, or raises
        ``ReplayError`` if it was seen before: the database's primary key decides, so a replay
        racing the original loses on every backend and across restarts. Forgotten ids are only
        those the signature check would refuse anyway."""
        now = _aware(now)
        try:
            with Session(self._engine) as session, session.begin():
                session.add(SeenRequestRow(request_id=request_id, valid_until=valid_until))
        except IntegrityError as exc:
            raise ReplayError("this signed request was already used") from exc
        self._forget_expired(now)

    def _forget_expired(self, now: datetime) -> None:
        """Housekeeping, at most once per ``SEEN_PRUNE_INTERVAL_S``, in a transaction of its own:
        two replicas pruning at once may conflict on a lock, and the next round prunes instead."""
        if now < self._next_prune:
            return
        self._next_prune = now + timedelta(seconds=SEEN_PRUNE_INTERVAL_S)
        with (
            contextlib.suppress(OperationalError),
            Session(self._engine) as session,
            session.begin(),
        ):
            session.execute(delete(SeenRequestRow).where(SeenRequestRow.valid_until < now))

    # --- consumer ------------------------------------------------------------------------------

    def create_request(
        self, client: ClientId, terms: ConsentRequestInput, *, now: datetime
    ) -> ConsentRequest:
        """A consumer (authenticated as ``client``) asks ``terms.subject`` for a consent."""
        now = _aware(now)
        if terms.client != str(client):
            raise RefusalError(
                "a consumer can only ask for consents given to itself", code="Client.Forbidden"
            )
        if terms.subject_agency != "citizen":
            # A consumer's own code must be resolved to the citizen first (consent.api does, with
            # the translator): never store a request the citizen could not find.
            raise ClientError(
                "the citizen is not named: resolve the consumer's pseudonym first",
                code="Client.SubjectAgencyUnsupported",
            )
        valid_from = terms.valid_from.replace(microsecond=0)
        valid_until = terms.valid_until.replace(microsecond=0)
        if valid_until <= now or valid_until <= valid_from:
            raise ClientError("the requested validity window is already over")
        row = ConsentRequestRow(
            id=str(uuid.uuid4()),
            subject=terms.subject,
            client=terms.client,
            services=list(terms.services),
            purpose_code=terms.purpose.code,
            purpose_ja=terms.purpose.text_ja,
            purpose_en=terms.purpose.text_en,
            fields=list(terms.fields),
            valid_from=valid_from,
            valid_until=valid_until,
            mode=terms.mode.value,
            max_uses=terms.max_uses,
            min_interval_s=terms.min_interval_s,
            data_retention_days=terms.data_retention_days,
            legal_text_version=terms.legal_text_version,
            status=ConsentRequestStatus.PENDING.value,
            created_at=now,
            decided_at=None,
            consent_id=None,
        )
        with Session(self._engine) as session, session.begin():
            session.add(row)
            session.flush()
            return _request(row, ConsentRequestStatus.PENDING)

    # --- citizen: requests ---------------------------------------------------------------------

    def _own_request(
        self, session: Session, subject: str, request_id: str, *, lock: bool
    ) -> ConsentRequestRow:
        if not _valid_id(request_id):
            raise NotFoundError(_NO_REQUEST)
        stmt = select(ConsentRequestRow).where(
            ConsentRequestRow.id == request_id, ConsentRequestRow.subject == subject
        )
        if lock:
            stmt = stmt.with_for_update()
        row = session.scalars(stmt).one_or_none()
        if row is None:
            raise NotFoundError(_NO_REQUEST)
        return row

    def list_requests(self, subject: str, *, now: datetime) -> list[ConsentRequest]:
        now = _aware(now)
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ConsentRequestRow)
                .where(ConsentRequestRow.subject == subject)
                .order_by(ConsentRequestRow.created_at.desc(), ConsentRequestRow.id)
                .limit(MAX_LIST)
            ).all()
            return [_request(r, _request_status(r, now)) for r in rows]

    def get_request(self, subject: str, request_id: str, *, now: datetime) -> ConsentRequest:
        now = _aware(now)
        with Session(self._engine) as session:
            row = self._own_request(session, subject, request_id, lock=False)
            return _request(row, _request_status(row, now))

    def _pending(self, row: ConsentRequestRow, now: datetime, verb: str) -> None:
        status = _request_status(row, now)
        if status is not ConsentRequestStatus.PENDING:
            if status is ConsentRequestStatus.EXPIRED and row.status != status.value:
                row.status = status.value
            raise ConflictError(
                f"cannot {verb} consent request {row.id}: it is {status.value}",
                code="Client.Conflict",
            )

    def approve_request(
        self, subject: str, request_id: str, *, now: datetime, on_behalf: OnBehalf | None = None
    ) -> Consent:
        """The citizen approves (or a representative for them, ``on_behalf``): the consent is
        granted and its artefact signed."""
        now = _aware(now)
        with Session(self._engine) as session, session.begin():
            req = self._own_request(session, subject, request_id, lock=True)
            try:
                self._pending(req, now, "approve")
            except ConflictError:
                session.commit()  # persist an observed expiry before reporting the conflict
                raise
            consent_id = str(uuid.uuid4())
            claims = ConsentArtefactClaims(
                iss=self._key.issuer,
                cid=consent_id,
                sub=req.subject,
                client=req.client,
                services=tuple(req.services),
                purpose=req.purpose_code,
                fields=tuple(req.fields),
                nbf=int(req.valid_from.timestamp()),
                exp=int(req.valid_until.timestamp()),
                iat=int(now.timestamp()),
                mode=req.mode,
                max_uses=req.max_uses,
                min_interval_s=req.min_interval_s,
                retention_days=req.data_retention_days,
                legal_text_version=req.legal_text_version,
            )
            row = ConsentRow(
                id=consent_id,
                subject=req.subject,
                client=req.client,
                services=list(req.services),
                purpose_code=req.purpose_code,
                purpose_ja=req.purpose_ja,
                purpose_en=req.purpose_en,
                fields=list(req.fields),
                valid_from=req.valid_from,
                valid_until=req.valid_until,
                mode=req.mode,
                max_uses=req.max_uses,
                min_interval_s=req.min_interval_s,
                data_retention_days=req.data_retention_days,
                legal_text_version=req.legal_text_version,
                status=ConsentStatus.ACTIVE.value,
                created_at=now,
                updated_at=now,
                use_count=0,
                last_used_at=None,
                request_id=req.id,
                artefact=self._key.sign_claims(claims),
                version=0,
            )
            session.add(row)
            req.status = ConsentRequestStatus.APPROVED.value
            req.decided_at = now
            req.consent_id = consent_id
            session.flush()
            self._record_change(
                session, row, None, HistoryAction.GRANTED, subject, now, on_behalf=on_behalf
            )
            return _consent(row, ConsentStatus.ACTIVE)

    def decline_request(self, subject: str, request_id: str, *, now: datetime) -> ConsentRequest:
        now = _aware(now)
        with Session(self._engine) as session, session.begin():
            req = self._own_request(session, subject, request_id, lock=True)
            try:
                self._pending(req, now, "decline")
            except ConflictError:
                session.commit()
                raise
            req.status = ConsentRequestStatus.DECLINED.value
            req.decided_at = now
            session.flush()
            return _request(req, ConsentRequestStatus.DECLINED)

    # --- citizen: consents ---------------------------------------------------------------------

    def _own(self, session: Session, subject: str, consent_id: str, *, lock: bool) -> ConsentRow:
        if not _valid_id(consent_id):
            raise NotFoundError(_NO_CONSENT)
        row = self._load(session, consent_id, lock=lock)
        if row is None or row.subject != subject:
            raise NotFoundError(_NO_CONSENT)
        return row

    def _load(self, session: Session, consent_id: str, *, lock: bool) -> ConsentRow | None:
        if lock and not self._postgres:
            # SQLite has no row locks: take the database write lock first (a no-op write), so the
            # read below sees the latest state and no other writer can slip in between.
            session.execute(
                update(ConsentRow)
                .where(ConsentRow.id == consent_id)
                .values(version=ConsentRow.version)
            )
        stmt = select(ConsentRow).where(ConsentRow.id == consent_id)
        if lock and self._postgres:
            stmt = stmt.with_for_update()
        return session.scalars(stmt).one_or_none()

    def _observe(self, session: Session, row: ConsentRow, now: datetime) -> ConsentStatus:
        """Persist a status that happened by itself (expiry) the first time it is observed."""
        status = effective_status(row, now)
        if status.value != row.status:
            previous = ConsentStatus(row.status)
            row.status = status.value
            row.updated_at = now
            row.version += 1
            self._record_change(session, row, previous, HistoryAction.EXPIRED, _SYSTEM, now)
        return status

    def _record_change(
        self,
        session: Session,
        row: ConsentRow,
        previous: ConsentStatus | None,
        action: HistoryAction,
        actor: str,
        now: datetime,
        *,
        message_id: str | None = None,
        on_behalf: OnBehalf | None = None,
    ) -> None:
        if on_behalf is not None:  # a representative acted: the history names them
            actor = on_behalf.actor
        consent = _consent(row, ConsentStatus(row.status))
        earlier = session.execute(
            select(ConsentHistoryRow.at, ConsentHistoryRow.action, ConsentHistoryRow.actor)
            .where(ConsentHistoryRow.consent_id == row.id)
            .order_by(ConsentHistoryRow.id)
        ).all()
        receipt = build_receipt(
            consent,
            action,
            receipt_id=str(uuid.uuid4()),
            issued_at=now,
            context=self._receipts,
            earlier=[RecordEvent(at, HistoryAction(a), who) for at, a, who in earlier],
            actor=actor,
        )
        session.add(
            ConsentReceiptRow(
                id=receipt.id,
                consent_id=row.id,
                action=action.value,
                issued_at=now,
                document=receipt.document,
                jws=self._key.sign_receipt(receipt.document),  # issue 15 item 5
            )
        )
        session.add(
            ConsentHistoryRow(
                consent_id=row.id,
                at=now,
                action=action.value,
                from_status=previous.value if previous else None,
                to_status=row.status,
                actor=actor,
                receipt_id=receipt.id,
            )
        )
        session.flush()
        if self._events is not None:  # the status push, committed with the change or not at all
            self._events.publish(session, row, action.value, now)
        if action is not HistoryAction.SPENT:  # a spending use is audited as consent.used
            self._audit.record(
                AuditEvent(
                    time=now,
                    node=self._node,
                    kind=_AUDIT_KIND[action],
                    decision="info",
                    client=row.client,
                    purpose=row.purpose_code,
                    subject=row.subject,
                    consent_id=row.id,
                    reason=f"{previous.value if previous else 'none'} -> {row.status}",
                    message_id=message_id,
                    represented_party=on_behalf.represented_party if on_behalf else None,
                    extra={"actor": actor, "receipt_id": receipt.id}
                    | ({"mandate": on_behalf.mandate_id} if on_behalf else {}),
                )
            )

    def list_consents(self, subject: str, *, now: datetime) -> list[Consent]:
        now = _aware(now)
        with Session(self._engine) as session, session.begin():
            rows = session.scalars(
                select(ConsentRow)
                .where(ConsentRow.subject == subject)
                .order_by(ConsentRow.created_at.desc(), ConsentRow.id)
                .limit(MAX_LIST)
            ).all()
            return [_consent(r, self._observe(session, r, now)) for r in rows]

    def get_consent(self, subject: str, consent_id: str, *, now: datetime) -> Consent:
        now = _aware(now)
        with Session(self._engine) as session, session.begin():
            row = self._own(session, subject, consent_id, lock=False)
            return _consent(row, self._observe(session, row, now))

    def _transition(
        self,
        verb: str,
        subject: str,
        consent_id: str,
        now: datetime,
        on_behalf: OnBehalf | None = None,
    ) -> Consent:
        now = _aware(now)
        allowed, target, action = _TRANSITIONS[verb]
        with Session(self._engine) as session, session.begin():
            row = self._own(session, subject, consent_id, lock=True)
            current = self._observe(session, row, now)
            if current not in allowed:
                session.commit()  # keep an observed expiry
                raise _illegal(verb, consent_id, current)
            row.status = target.value
            row.updated_at = now
            row.version += 1
            self._record_change(session, row, current, action, subject, now, on_behalf=on_behalf)
            return _consent(row, target)

    def pause(
        self, subject: str, consent_id: str, *, now: datetime, on_behalf: OnBehalf | None = None
    ) -> Consent:
        return self._transition("pause", subject, consent_id, now, on_behalf)

    def resume(
        self, subject: str, consent_id: str, *, now: datetime, on_behalf: OnBehalf | None = None
    ) -> Consent:
        return self._transition("resume", subject, consent_id, now, on_behalf)

    def revoke(
        self, subject: str, consent_id: str, *, now: datetime, on_behalf: OnBehalf | None = None
    ) -> Consent:
        return self._transition("revoke", subject, consent_id, now, on_behalf)

    def history(self, subject: str, consent_id: str, *, now: datetime) -> list[ConsentHistoryEvent]:
        now = _aware(now)
        with Session(self._engine) as session, session.begin():
            row = self._own(session, subject, consent_id, lock=False)
            self._observe(session, row, now)
            rows = session.scalars(
                select(ConsentHistoryRow)
                .where(ConsentHistoryRow.consent_id == consent_id)
                .order_by(ConsentHistoryRow.id)
            ).all()
            return [
                ConsentHistoryEvent(
                    consent_id=h.consent_id,
                    seq=i,
                    at=h.at,
                    action=HistoryAction(h.action),
                    from_status=ConsentStatus(h.from_status) if h.from_status else None,
                    to_status=ConsentStatus(h.to_status),
                    actor=h.actor,
                    receipt_id=h.receipt_id,
                )
                for i, h in enumerate(rows, start=1)
            ]

    def uses(self, subject: str, consent_id: str, *, now: datetime) -> list[ConsentUse]:
        now = _aware(now)
        with Session(self._engine) as session:
            self._own(session, subject, consent_id, lock=False)
            rows = session.scalars(
                select(ConsentUseRow)
                .where(ConsentUseRow.consent_id == consent_id)
                .order_by(ConsentUseRow.id)
            ).all()
            return [
                ConsentUse(
                    consent_id=u.consent_id,
                    message_id=u.message_id,
                    at=u.at,
                    client=u.client,
                    service=u.service,
                    fields=tuple(u.fields),
                )
                for u in rows
            ]

    def receipts(self, subject: str, consent_id: str, *, now: datetime) -> list[Receipt]:
        now = _aware(now)
        with Session(self._engine) as session, session.begin():
            row = self._own(session, subject, consent_id, lock=False)
            self._observe(session, row, now)
            rows = session.scalars(
                select(ConsentReceiptRow)
                .where(ConsentReceiptRow.consent_id == consent_id)
                .order_by(ConsentReceiptRow.issued_at, ConsentReceiptRow.id)
            ).all()
            return [self._receipt(r) for r in rows]

    def receipt(self, subject: str, consent_id: str, receipt_id: str, *, now: datetime) -> Receipt:
        _aware(now)
        if not _valid_id(receipt_id):
            raise NotFoundError(_NO_RECEIPT)
        with Session(self._engine) as session:
            self._own(session, subject, consent_id, lock=False)
            row = session.get(ConsentReceiptRow, receipt_id)
            if row is None or row.consent_id != consent_id:
                raise NotFoundError(_NO_RECEIPT)
            return self._receipt(row)

    @staticmethod
    def _receipt(row: ConsentReceiptRow) -> Receipt:
        return Receipt(
            id=row.id,
            consent_id=row.consent_id,
            action=HistoryAction(row.action),
            issued_at=row.issued_at,
            document=row.document,
            jws=row.jws,
        )

    # --- the gate (exchange.ports.ConsentGate) -------------------------------------------------

    def _verify_artefact(self, query: ConsentQuery) -> str | None:
        """Steps 1-2: the reason to refuse, or None."""
        if query.artefact is None:
            return "no consent artefact was presented" if self._require_artefact else None
        try:
            claims = self._verifier.verify(query.artefact)  # (1) forged/altered/other domain
        except VerificationError:
            return "consent artefact verification failed"
        if claims.cid != query.consent_id:  # (2) another consent's artefact
            return "the consent artefact is for another consent"
        return None

    def _decide(
        self, row: _ScopeRow | None, query: ConsentQuery, now: datetime, *, retry: bool = False
    ) -> str | None:
        """Steps 3-5: the reason to refuse, or None. ``retry``: the query repeats an earlier use
        under the same Idempotency-Key, so a consent that use spent still covers it (but not one
        revoked, paused or expired since)."""
        if row is None:  # (3)
            return f"unknown consent {query.consent_id}"
        status = effective_status(row, now)  # (4) revocation etc. win over the artefact
        if status is not ConsentStatus.ACTIVE and not (retry and status is ConsentStatus.SPENT):
            return f"consent {query.consent_id} is {status.value}"
        return scope_mismatch(  # (5)
            subject=row.subject,
            client=row.client,
            services=row.services,
            purpose=row.purpose_code,
            fields=row.fields,
            valid_from=row.valid_from,
            valid_until=row.valid_until,
            query=query,
        )

    def _allowed_fields(self, row: _ScopeRow, query: ConsentQuery) -> frozenset[str]:
        return frozenset(query.fields) if query.fields else frozenset(row.fields)

    def check(self, query: ConsentQuery) -> ConsentDecision:
        """Does the consent cover this exchange right now? No side effects."""
        now = _aware(query.now)
        reason = self._verify_artefact(query)
        if reason is not None:
            return _deny(query.consent_id, reason)
        if not _valid_id(query.consent_id):
            return _deny(query.consent_id, f"unknown consent {query.consent_id[:64]}")
        # One indexed read of the columns the decision needs (Core, not ORM: this is the hot path).
        with self._engine.connect() as conn:
            row: _ScopeRow | None = conn.execute(
                _CHECK_COLUMNS.where(ConsentRow.id == query.consent_id)
            ).one_or_none()
            reason = self._decide(row, query, now)
            if reason is not None and row is not None and _prior_use(conn, query) is not None:
                reason = self._decide(row, query, now, retry=True)
        if reason is not None or row is None:
            return _deny(query.consent_id, reason or "unknown consent")
        return ConsentDecision(
            allow=True,
            consent_id=row.id,
            fields=self._allowed_fields(row, query),
            retention_days=row.data_retention_days,
        )

    def use(self, query: ConsentQuery) -> ConsentDecision:
        """Check again and record the use atomically; spend a one-time consent. Refusals are
        audited (kind ``refusal``); a use is audited as ``consent.used``."""
        now = _aware(query.now)
        reason = self._verify_artefact(query)
        if reason is None and not _valid_id(query.consent_id):
            reason = f"unknown consent {query.consent_id[:64]}"
        if reason is not None:
            return self._refuse(query, reason, now)
        try:
            with Session(self._engine) as session, session.begin():
                row = self._load(session, query.consent_id, lock=True)
                if row is not None:
                    self._observe(session, row, now)
                prior = _prior_use(session, query) if row is not None else None
                reason = self._decide(row, query, now, retry=prior is not None)
                if reason is None and row is not None and prior is None:
                    reason = self._limits(session, row, query, now)  # (6)
                if reason is not None or row is None:
                    session.commit()  # keep an observed expiry
                    return self._refuse(query, reason or "unknown consent", now)
                if prior is not None:
                    return self._record_retry(row, prior, query, now)
                return self._record_use(session, row, query, now)
        except IntegrityError:
            return self._refuse(query, "this message has already used the consent", now)

    def _limits(
        self, session: Session, row: ConsentRow, query: ConsentQuery, now: datetime
    ) -> str | None:
        if row.max_uses is not None and row.use_count >= row.max_uses:
            return f"consent {row.id} has reached its limit of {row.max_uses} uses"
        if (
            row.min_interval_s is not None
            and row.last_used_at is not None
            and now < row.last_used_at + timedelta(seconds=row.min_interval_s)
        ):
            return (
                f"consent {row.id} may be used at most once every {row.min_interval_s} s; "
                f"next use from {(row.last_used_at + timedelta(seconds=row.min_interval_s)).isoformat()}"
            )
        seen = session.scalar(
            select(ConsentUseRow.id).where(
                ConsentUseRow.consent_id == row.id, ConsentUseRow.message_id == query.message_id
            )
        )
        if seen is not None:
            return "this message has already used the consent"
        return None

    def _record_use(
        self, session: Session, row: ConsentRow, query: ConsentQuery, now: datetime
    ) -> ConsentDecision:
        fields = self._allowed_fields(row, query)
        spent = row.mode == ConsentMode.ONE_TIME.value or (
            row.max_uses is not None and row.use_count + 1 >= row.max_uses
        )
        new_status = ConsentStatus.SPENT if spent else ConsentStatus.ACTIVE
        # Compare-and-set on the version: whatever the backend's locking, a concurrent change
        # between our read and this write makes the use fail instead of double-spending.
        result = session.execute(
            update(ConsentRow)
            .where(ConsentRow.id == row.id, ConsentRow.version == row.version)
            .values(
                use_count=row.use_count + 1,
                last_used_at=now,
                status=new_status.value,
                updated_at=now,
                version=row.version + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            session.rollback()
            return self._refuse(query, f"consent {row.id} changed concurrently; try again", now)
        session.add(
            ConsentUseRow(
                consent_id=row.id,
                message_id=query.message_id,
                at=now,
                client=str(query.client),
                service=str(query.service),
                fields=sorted(fields),
                idempotency_key=query.idempotency_key,
            )
        )
        session.flush()
        self._audit_use(row, query, fields, now)
        if spent:
            session.refresh(row)
            self._record_change(
                session,
                row,
                ConsentStatus.ACTIVE,
                HistoryAction.SPENT,
                _SYSTEM,
                now,
                message_id=query.message_id,
            )
        return ConsentDecision(
            allow=True, consent_id=row.id, fields=fields, retention_days=row.data_retention_days
        )

    def _record_retry(
        self, row: ConsentRow, prior_message_id: str, query: ConsentQuery, now: datetime
    ) -> ConsentDecision:
        """The same use again (same key, client and service): allowed, audited, not counted."""
        fields = self._allowed_fields(row, query)
        self._audit_use(row, query, fields, now, retry_of=prior_message_id)
        return ConsentDecision(
            allow=True, consent_id=row.id, fields=fields, retention_days=row.data_retention_days
        )

    def _audit_use(
        self,
        row: ConsentRow,
        query: ConsentQuery,
        fields: frozenset[str],
        now: datetime,
        *,
        retry_of: str | None = None,
    ) -> None:
        extra = {"fields": ",".join(sorted(fields))}
        if retry_of is not None:
            extra["retry_of"] = retry_of
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="consent.used",
                decision="allow",
                client=str(query.client),
                service=str(query.service),
                purpose=query.purpose,
                subject=row.subject,
                consent_id=row.id,
                message_id=query.message_id,
                extra=extra,
            )
        )

    def _refuse(self, query: ConsentQuery, reason: str, now: datetime) -> ConsentDecision:
        self._audit.record(
            AuditEvent(
                time=now,
                node=self._node,
                kind="refusal",
                decision="deny",
                client=str(query.client),
                service=str(query.service),
                purpose=query.purpose,
                subject=query.subject,
                consent_id=query.consent_id[:64],
                reason=reason,
                message_id=query.message_id,
            )
        )
        return _deny(query.consent_id, reason)
