"""The one-stop address change (issue 7 "The procedure"): start, plan, preview, confirm.

1. **Start**: the citizen gives the move date and the new address — or picks a property from their
   land-registry record, and the address is taken from the registry (once-only). Checks: the move
   date lies at most ``MAX_MOVE_PAST_DAYS`` back and ``MAX_MOVE_AHEAD_DAYS`` ahead; the address is
   in Machida (``東京都町田市`` followed by a place) and differs from the registered one.
2. **Plan**: the registries are asked, through the one-stop node, which parties are concerned: the
   resident registry always; tax (notified by statute — a "not enrolled" answer then means "not
   concerned"); national health insurance, child allowance, water, electricity and gas where the
   citizen is enrolled (their enrolment/contract services answer 404 otherwise).
3. **Preview**: per recipient, the fields and values that will be sent and the basis (the statute,
   or the citizen's consent for private companies, for which a one-time consent request is made).
4. **Confirm**: the citizen approves or declines each consent; the procedure's steps are written
   (declined → ``skipped``) and the runner (``procedures.runner``) carries them out.

Duplicate submissions: a start carries a submission key (the ``Idempotency-Key`` of the request,
or the hash of its input) unique per citizen, so a second identical submission returns the first
procedure, marked ``duplicate``; a second confirmation changes nothing.

Trust assumptions: ``subject`` is the citizen id from a verified token (their ``CITIZEN_AGENCY``
pseudonym); the one-stop node is ours and answers with verified data; another citizen's procedure
is indistinguishable from an unknown one (``NotFoundError``, no existence oracle).
"""

from __future__ import annotations

import asyncio
import hashlib
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.reference.registries import (
    ELECTRICITY_MEMBER,
    GAS_MEMBER,
    LAND_REGISTRY_MEMBER,
    MACHIDA_MEMBER,
)
from adapters.reference.rights import ONE_STOP, REFERENCE_RIGHTS, Right
from consent.mandates import Mandate
from consent.model import (
    Consent,
    ConsentMode,
    ConsentRequest,
    ConsentRequestInput,
    Purpose,
)
from exchange.canonical import canonical_json
from exchange.errors import (
    ClientError,
    ConflictError,
    NotFoundError,
    RefusalError,
    TransportError,
)
from exchange.identifiers import ClientId
from procedures.model import (
    AddressChangeInput,
    ConfirmInput,
    ProcedureStatus,
    ProcedureView,
    RecipientPreview,
    StepState,
    StepView,
)
from procedures.one_stop import (
    ADDRESS_CHANGE_PURPOSE,
    ExchangeOutcome,
    OneStopClient,
    represented,
)
from procedures.store import ProcedureRow, StepRow

__all__ = [
    "KIND",
    "MACHIDA_PREFIX",
    "MAX_MOVE_AHEAD_DAYS",
    "MAX_MOVE_PAST_DAYS",
    "RECIPIENTS",
    "AddressChangeService",
    "ConsentDesk",
    "Recipient",
    "procedure_view",
    "validate_address",
    "validate_move_date",
]

KIND = "address-change"
MACHIDA_PREFIX = "東京都町田市"
MAX_MOVE_PAST_DAYS = 365
MAX_MOVE_AHEAD_DAYS = 92
"""About three months."""
CONSENT_VALIDITY_S = 30 * 24 * 3600
"""How long a one-time consent of the preview stays usable (the run normally takes seconds)."""
CONSENT_LEGAL_TEXT_VERSION = "address-change-2026-1"
MAX_SUBMISSION_KEY_CHARS = 128
SUBMISSION_KEY_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:"
)
PURPOSE = Purpose(
    code=ADDRESS_CHANGE_PURPOSE,
    text_ja="引越しワンストップサービス：新しい住所と転居日を契約先に通知し、供給場所を変更します。",
    text_en="Moving one-stop service: tell your supplier your new address and move date so that "
    "the supply moves with you.",
)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One party an address change may concern, and how it is told."""

    key: str
    member: str
    subsystem: str
    name_ja: str
    name_en: str
    change_code: str
    read_code: str | None
    """The service telling whether the citizen is enrolled (None: cannot be read → if enrolled)."""
    probe_field: str | None
    address_field: str
    date_field: str
    date_is_move: bool
    """True: the date sent is the move date; False: the date of notification (today)."""
    order_group: int
    private: bool = False

    def service(self, code: str) -> str:
        return f"{self.member}/{self.subsystem}/{code}/v1"

    @property
    def change_service(self) -> str:
        return self.service(self.change_code)


def _notified(
    key: str, name_ja: str, name_en: str, read: str | None, probe: str | None
) -> Recipient:
    return Recipient(
        key,
        MACHIDA_MEMBER,
        key,
        name_ja,
        name_en,
        "address-notification",
        read,
        probe,
        "address",
        "address_notified_on",
        False,
        1,
    )


def _supply(key: str, member: str, name_ja: str, name_en: str, private: bool) -> Recipient:
    return Recipient(
        key,
        member,
        key,
        name_ja,
        name_en,
        "supply-address-change",
        "contract",
        "contract_number",
        "supply_address",
        "supply_change_on",
        True,
        1,
        private,
    )


RESIDENT = Recipient(
    "resident-registry",
    MACHIDA_MEMBER,
    "resident-registry",
    "町田市 住民基本台帳（転居届）",
    "Machida resident registry (notice of moving)",
    "address-change",
    "address",
    "address",
    "address",
    "moved_in_on",
    True,
    0,
)
RECIPIENTS: tuple[Recipient, ...] = (
    RESIDENT,
    _notified("municipal-tax", "町田市 市民税課", "Machida municipal tax", None, None),
    _notified(
        "national-health-insurance",
        "町田市 国民健康保険",
        "Machida national health insurance",
        "enrolment",
        "enrolled_on",
    ),
    _notified(
        "child-allowance", "町田市 児童手当", "Machida child allowance", "recipient", "certified_on"
    ),
    _supply("water", MACHIDA_MEMBER, "町田市 水道", "Machida water bureau", False),
    _supply("electricity", ELECTRICITY_MEMBER, "町田電力", "Machida Denryoku (electricity)", True),
    _supply("gas", GAS_MEMBER, "多摩ガス", "Tama Gas", True),
)
"""Every party an address change may concern, the resident registry first (order group 0)."""
_BY_KEY = {r.key: r for r in RECIPIENTS}
LAND_PROPERTY = f"{LAND_REGISTRY_MEMBER}/land-registry/property/v1"
PROPERTY_FIELDS = ("property_number", "kind", "location", "cause", "transfer_date")
"""Data minimisation: what picking a property needs (not the area, nor other owners' data)."""


def _statute(service: str) -> Right | None:
    """The statutory basis of the desk's exchange with ``service`` (None: consent is needed)."""
    for right in REFERENCE_RIGHTS:
        if right.client == str(ONE_STOP) and right.service == service and right.statute:
            return right
    return None


@dataclass(frozen=True, slots=True)
class Acting:
    """A representative acting for the procedure's citizen under a checked mandate."""

    representative: str
    mandate_id: str
    represented_party: str


class ConsentDesk(Protocol):
    """What the preview and the confirmation need of the consent service
    (``procedures.consent_desk``: in-process or over HTTP). ``token`` is the signed-in citizen's
    bearer token, forwarded when the citizen's decision goes to the consent service over HTTP."""

    def create_request(
        self, client: ClientId, terms: ConsentRequestInput, *, now: datetime
    ) -> ConsentRequest: ...

    def approve_request(
        self,
        subject: str,
        request_id: str,
        *,
        now: datetime,
        token: str | None,
        acting: Acting | None = None,
    ) -> Consent: ...

    def authorise_mandate(
        self,
        representative: str,
        mandate_id: str,
        *,
        procedure: str,
        now: datetime,
        token: str | None,
    ) -> Mandate:
        """The mandate under which ``representative`` starts ``procedure``, checked (and any
        refusal audited) by the consent service; ``RefusalError`` otherwise."""
        ...

    def decline_request(
        self, subject: str, request_id: str, *, now: datetime, token: str | None
    ) -> ConsentRequest: ...


# --- checks ------------------------------------------------------------------------------------


def validate_move_date(move_date: date, *, now: datetime) -> None:
    """At most ``MAX_MOVE_PAST_DAYS`` back (late notices have their own counter procedure) and
    ``MAX_MOVE_AHEAD_DAYS`` ahead (a notice of moving is accepted ahead of time, not a year)."""
    today = now.date()
    if move_date < today - timedelta(days=MAX_MOVE_PAST_DAYS):
        raise ClientError(
            f"the move date {move_date.isoformat()} is more than {MAX_MOVE_PAST_DAYS} days ago; "
            "please come to the resident counter",
            code="Client.InvalidMoveDate",
        )
    if move_date > today + timedelta(days=MAX_MOVE_AHEAD_DAYS):
        raise ClientError(
            f"the move date {move_date.isoformat()} is more than {MAX_MOVE_AHEAD_DAYS} days ahead",
            code="Client.InvalidMoveDate",
        )


def validate_address(address: str) -> str:
    """The address, NFKC-normalised and trimmed, if it is a place in Machida; else 400."""
    text = unicodedata.normalize("NFKC", address).strip()
    # NFKC turns full-width digits and spaces into ASCII; the registries write the city name as is.
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text):
        raise ClientError("the address contains control characters", code="Client.InvalidAddress")
    if not text.startswith(MACHIDA_PREFIX) or len(text.removeprefix(MACHIDA_PREFIX).strip()) < 2:
        raise ClientError(
            f"unknown address: the one-stop address change covers moves to an address in "
            f"{MACHIDA_PREFIX} (Machida city), e.g. {MACHIDA_PREFIX}原町田一丁目1番1号",
            code="Client.InvalidAddress",
        )
    return text


def _submission_key(given: str | None, data: AddressChangeInput) -> str:
    if given is None:
        return "h-" + hashlib.sha256(canonical_json(data.model_dump(mode="json"))).hexdigest()
    if not 1 <= len(given) <= MAX_SUBMISSION_KEY_CHARS or not set(given) <= SUBMISSION_KEY_CHARS:
        raise ClientError(
            f"Idempotency-Key must be 1..{MAX_SUBMISSION_KEY_CHARS} of A-Z a-z 0-9 - _ . :",
            code="Client.InvalidIdempotencyKey",
        )
    return "k-" + given


def _unavailable(what: str, outcome: ExchangeOutcome) -> TransportError:
    return TransportError(f"{what} cannot be reached now, please try again ({outcome.reason})")


# --- views -------------------------------------------------------------------------------------


def _step_view(s: StepRow) -> StepView:
    state = StepState(s.state)
    return StepView(
        seq=s.seq,
        recipient=s.recipient,
        service=s.service,
        basis="consent" if s.basis == "consent" else "statute",
        statute=s.statute,
        consent_id=s.consent_id,
        fields=tuple(s.fields),
        state=state,
        attempts=s.attempts,
        next_attempt_at=s.next_attempt_at if state is StepState.PENDING else None,
        last_error=s.last_error,
        result_hash=s.result_hash,
        finished_at=s.finished_at,
        told_by=_told_by(s),
    )


def _told_by(s: StepRow) -> str | None:
    if s.message_id is not None or not isinstance(s.result, dict):
        return None
    told = s.result.get("told_by")
    return told if isinstance(told, str) else None


def procedure_view(
    row: ProcedureRow, steps: Sequence[StepRow], *, duplicate: bool = False
) -> ProcedureView:
    """The citizen's (and staff's) view of a procedure and every step."""
    plan = row.plan
    return ProcedureView(
        id=row.id,
        kind=row.kind,
        status=ProcedureStatus(row.status),
        move_date=date.fromisoformat(plan["move_date"]),
        new_address=plan["new_address"],
        address_source=plan["address_source"],
        current_address=plan.get("current_address"),
        created_at=row.created_at,
        recipients=tuple(RecipientPreview.model_validate(r) for r in plan["recipients"]),
        steps=tuple(_step_view(s) for s in sorted(steps, key=lambda s: s.seq)),
        duplicate=duplicate,
        certificate_available=row.result is not None,
        represented_party=row.represented_party,
        acted_by=row.acted_by,
    )


# --- the service -------------------------------------------------------------------------------


class AddressChangeService:
    """Start/plan/preview/confirm, and the reads of the citizen's and staff's views."""

    def __init__(self, engine: Engine, client: OneStopClient, consents: ConsentDesk) -> None:
        self._engine = engine
        self._client = client
        self._consents = consents

    def act_for(
        self, representative: str, mandate_id: str, *, token: str | None, now: datetime
    ) -> tuple[str, Acting]:
        """The citizen ``representative`` acts for under ``mandate_id`` (checked by the consent
        service for this procedure, a refusal audited there), and how."""
        mandate = self._consents.authorise_mandate(
            representative, mandate_id, procedure=KIND, now=now, token=token
        )
        return mandate.represented, Acting(representative, mandate.id, mandate.represented_party)

    # -- reads ------------------------------------------------------------------------------------

    def _load(
        self, session: Session, procedure_id: str, subject: str | None
    ) -> tuple[ProcedureRow, list[StepRow]]:
        """``subject=None`` only for counter staff (any procedure)."""
        row = session.get(ProcedureRow, procedure_id) if len(procedure_id) <= 36 else None
        if row is None or (subject is not None and row.subject != subject):
            raise NotFoundError("no such procedure")
        steps = list(session.scalars(select(StepRow).where(StepRow.procedure_id == row.id)).all())
        return row, steps

    def get(self, procedure_id: str, *, subject: str | None) -> ProcedureView:
        with Session(self._engine) as session:
            row, steps = self._load(session, procedure_id, subject)
            return procedure_view(row, steps)

    def list_for(self, subject: str) -> list[ProcedureView]:
        with Session(self._engine) as session:
            rows = session.scalars(
                select(ProcedureRow)
                .where(ProcedureRow.subject == subject)
                .order_by(ProcedureRow.created_at.desc())
                .limit(50)
            ).all()
            return [self._view(session, r) for r in rows]

    def _view(
        self, session: Session, row: ProcedureRow, *, duplicate: bool = False
    ) -> ProcedureView:
        steps = session.scalars(select(StepRow).where(StepRow.procedure_id == row.id)).all()
        return procedure_view(row, list(steps), duplicate=duplicate)

    def certificate(self, procedure_id: str, *, subject: str | None) -> dict[str, Any]:
        """The signed summary, once every step is final (409 before that)."""
        with Session(self._engine) as session:
            row, _ = self._load(session, procedure_id, subject)
            if row.result is None:
                raise ConflictError(
                    "the procedure is not finished yet: no certificate",
                    code="Client.ProcedureNotFinished",
                )
            return dict(row.result)

    async def recent_properties(self, subject: str, *, now: datetime) -> list[dict[str, Any]]:
        """Properties the citizen acquired within ``MAX_MOVE_PAST_DAYS``: what the portal offers
        to pick from, so that the new address is taken from the land registry."""
        outcome = await self._client.read(LAND_PROPERTY, subject, fields=PROPERTY_FIELDS)
        if outcome.kind == "transient":
            raise _unavailable("the land registry", outcome)
        if outcome.kind != "ok" or not isinstance(outcome.data, list):
            return []
        oldest = now.date() - timedelta(days=MAX_MOVE_PAST_DAYS)
        out = []
        for p in outcome.data:
            if not isinstance(p, dict):
                continue
            try:
                on = date.fromisoformat(str(p.get("transfer_date")))
            except ValueError:
                continue
            if on >= oldest and str(p.get("location", "")).startswith(MACHIDA_PREFIX):
                out.append(p)
        return out

    # -- start, plan, preview -------------------------------------------------------------------

    async def start(
        self,
        subject: str,
        data: AddressChangeInput,
        *,
        now: datetime,
        submission_key: str | None = None,
        acting: Acting | None = None,
    ) -> ProcedureView:
        """Start for ``subject``; with ``acting``, a representative starts it for ``subject``
        under a mandate the consent service checked, and every exchange of the procedure (its
        reads here, its steps in the runner) carries ``X-Road-Represented-Party``."""
        with represented(acting.represented_party if acting else None):
            return await self._start(subject, data, now, submission_key, acting)

    async def _start(
        self,
        subject: str,
        data: AddressChangeInput,
        now: datetime,
        submission_key: str | None,
        acting: Acting | None,
    ) -> ProcedureView:
        key = _submission_key(submission_key, data)
        seen = await asyncio.to_thread(self._seen, subject, key)
        if seen is not None:
            return seen
        if (data.address is None) == (data.property_number is None):
            raise ClientError(
                "give either the new address or the property_number of a land-registry record",
                code="Client.InvalidInput",
            )
        if data.address is not None:
            # Typed input is checked before any registry is asked.
            if data.move_date is None:
                raise ClientError("the move date is required", code="Client.InvalidMoveDate")
            validate_move_date(data.move_date, now=now)
            validate_address(data.address)
        current = await self._client.read(RESIDENT.service("address"), subject, fields=("address",))
        if current.kind == "not-enrolled":
            raise ClientError(
                "you are not registered as a resident of Machida: a move into the city is "
                "notified at the resident counter (転入届)",
                code="Client.NotResident",
            )
        if current.kind == "transient":
            raise _unavailable("the resident registry", current)
        if current.kind != "ok" or not isinstance(current.data, dict):
            raise RefusalError(
                "the resident registry refused the one-stop desk", reasons=(current.reason,)
            )
        current_address = current.data.get("address")
        source: Literal["typed", "land-registry"]
        if data.property_number is not None:
            address, move_date = await self._from_land_registry(subject, data.property_number)
            move_date = data.move_date or move_date
            source = "land-registry"
        else:
            assert data.address is not None
            assert data.move_date is not None
            address, move_date, source = data.address, data.move_date, "typed"
        address = validate_address(address)
        validate_move_date(move_date, now=now)
        if isinstance(current_address, str) and same_address(current_address, address):
            raise ClientError(
                "you are already registered at this address", code="Client.InvalidAddress"
            )
        procedure_id = str(uuid.uuid4())
        recipients = await self._plan(subject, address, move_date, now=now)

        def previews_of() -> list[RecipientPreview]:  # consent requests: database work
            return [
                self._preview(r, address, move_date, if_enrolled, subject, procedure_id, now)
                for r, if_enrolled in recipients
            ]

        previews = await asyncio.to_thread(previews_of)
        row = ProcedureRow(
            id=procedure_id,
            subject=subject,
            kind=KIND,
            status=ProcedureStatus.PREVIEWED.value,
            input=data.model_dump(mode="json"),
            plan={
                "move_date": move_date.isoformat(),
                "new_address": address,
                "address_source": source,
                "current_address": current_address if isinstance(current_address, str) else None,
                "recipients": [p.model_dump(mode="json") for p in previews],
            },
            submission_key=key,
            created_at=now,
            updated_at=now,
            represented_party=acting.represented_party if acting else None,
            acted_by=acting.representative if acting else None,
        )
        return await asyncio.to_thread(self._save, row)

    def _seen(self, subject: str, key: str) -> ProcedureView | None:
        with Session(self._engine) as session:
            seen = session.scalars(
                select(ProcedureRow).where(
                    ProcedureRow.subject == subject, ProcedureRow.submission_key == key
                )
            ).first()
            return None if seen is None else self._view(session, seen, duplicate=True)

    def _save(self, row: ProcedureRow) -> ProcedureView:
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                session.add(row)
        except IntegrityError:
            # The same submission raced us and won: answer with the first one.
            first = self._seen(row.subject, row.submission_key)
            if first is None:  # pragma: no cover - the unique key is the only constraint
                raise
            return first
        return procedure_view(row, [])

    async def _from_land_registry(self, subject: str, property_number: str) -> tuple[str, date]:
        outcome = await self._client.read(LAND_PROPERTY, subject, fields=PROPERTY_FIELDS)
        if outcome.kind == "transient":
            raise _unavailable("the land registry", outcome)
        records = outcome.data if outcome.kind == "ok" and isinstance(outcome.data, list) else []
        for p in records:
            if isinstance(p, dict) and p.get("property_number") == property_number:
                try:
                    return str(p["location"]), date.fromisoformat(str(p["transfer_date"]))
                except (KeyError, ValueError):
                    break
        raise ClientError(
            "no such property among your land-registry records", code="Client.UnknownProperty"
        )

    async def _plan(
        self, subject: str, address: str, move_date: date, *, now: datetime
    ) -> list[tuple[Recipient, bool]]:
        """Which parties are concerned: ``(recipient, if_enrolled)`` in order."""

        async def probe(r: Recipient) -> tuple[Recipient, bool] | None:
            if r is RESIDENT:
                return r, False
            if r.read_code is None:
                return r, True
            probe_fields = (r.probe_field,) if r.probe_field else None
            outcome = await self._client.read(r.service(r.read_code), subject, fields=probe_fields)
            if outcome.kind == "ok":
                return r, False
            if outcome.kind == "not-enrolled":
                return None
            # Refused (a private company's contract cannot be read before the consent) or
            # unreachable right now: send the change anyway; "not enrolled" then means skipped.
            return r, True

        found = await asyncio.gather(*(probe(r) for r in RECIPIENTS))
        return [f for f in found if f is not None]

    def _preview(
        self,
        r: Recipient,
        address: str,
        move_date: date,
        if_enrolled: bool,
        subject: str,
        procedure_id: str,
        now: datetime,
    ) -> RecipientPreview:
        values = {
            r.address_field: address,
            r.date_field: (move_date if r.date_is_move else now.date()).isoformat(),
        }
        consent_request_id = None
        if r.private:
            request = self._consents.create_request(
                ONE_STOP,
                ConsentRequestInput(
                    subject=subject,
                    client=str(ONE_STOP),
                    services=(r.service("contract"), r.change_service),
                    purpose=PURPOSE,
                    fields=tuple(values),
                    valid_from=now,
                    valid_until=now + timedelta(seconds=CONSENT_VALIDITY_S),
                    mode=ConsentMode.ONE_TIME,
                    data_retention_days=0,
                    legal_text_version=CONSENT_LEGAL_TEXT_VERSION,
                ),
                now=now,
            )
            consent_request_id = request.id
        statute = None if r.private else _statute(r.change_service)
        return RecipientPreview(
            recipient=r.key,
            name_ja=r.name_ja,
            name_en=r.name_en,
            service=r.change_service,
            basis="consent" if r.private else "statute",
            statute=statute.statute if statute else None,
            statute_title_ja=statute.title_ja if statute else None,
            statute_title_en=statute.title_en if statute else None,
            fields=values,
            if_enrolled=if_enrolled,
            consent_request_id=consent_request_id,
        )

    # -- confirm --------------------------------------------------------------------------------

    def confirm(
        self,
        subject: str,
        procedure_id: str,
        decisions: ConfirmInput,
        *,
        now: datetime,
        token: str | None = None,
        acting: Acting | None = None,
    ) -> ProcedureView:
        """Record the consent decisions and write the steps; a second call changes nothing.
        ``token`` is the citizen's bearer token, for a consent service reached over HTTP."""
        with Session(self._engine) as session:
            row, _ = self._load(session, procedure_id, subject)
            if row.status != ProcedureStatus.PREVIEWED.value:
                return self._view(session, row, duplicate=True)
            previews = [RecipientPreview.model_validate(r) for r in row.plan["recipients"]]
        private = {p.recipient for p in previews if p.consent_request_id is not None}
        unknown = set(decisions.consents) - private
        if unknown:
            raise ClientError(
                f"no consent is asked of {', '.join(sorted(unknown))} in this procedure",
                code="Client.InvalidInput",
            )
        missing = private - set(decisions.consents)
        if missing:
            raise ClientError(
                f"approve or decline the consent for {', '.join(sorted(missing))}",
                code="Client.ConsentDecisionMissing",
            )
        granted: dict[str, Consent] = {}
        try:
            for p in previews:
                if p.consent_request_id is None:
                    continue
                if decisions.consents[p.recipient] == "approve":
                    granted[p.recipient] = self._consents.approve_request(
                        subject, p.consent_request_id, now=now, token=token, acting=acting
                    )
                else:
                    self._consents.decline_request(
                        subject, p.consent_request_id, now=now, token=token
                    )
        except ConflictError:
            # A simultaneous confirmation decided first: answer with its result.
            with Session(self._engine) as session:
                row, _ = self._load(session, procedure_id, subject)
                if row.status != ProcedureStatus.PREVIEWED.value:
                    return self._view(session, row, duplicate=True)
            raise
        steps = [
            self._step(procedure_id, seq, p, granted.get(p.recipient), now)
            for seq, p in enumerate(previews)
        ]
        with Session(self._engine) as session, session.begin():
            moved = session.execute(
                update(ProcedureRow)
                .where(
                    ProcedureRow.id == procedure_id,
                    ProcedureRow.status == ProcedureStatus.PREVIEWED.value,
                )
                .values(status=ProcedureStatus.RUNNING.value, confirmed_at=now, updated_at=now)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                with Session(self._engine) as again:
                    first, _ = self._load(again, procedure_id, subject)
                    return self._view(again, first, duplicate=True)
            session.add_all(steps)
        return self.get(procedure_id, subject=subject)

    @staticmethod
    def _step(
        procedure_id: str, seq: int, p: RecipientPreview, consent: Consent | None, now: datetime
    ) -> StepRow:
        r = _BY_KEY[p.recipient]
        declined = p.basis == "consent" and consent is None
        return StepRow(
            id=str(uuid.uuid4()),
            procedure_id=procedure_id,
            seq=seq,
            order_group=r.order_group,
            recipient=r.key,
            service=p.service,
            basis=p.basis,
            statute=p.statute,
            consent_id=consent.id if consent else None,
            consent_artefact=consent.artefact if consent else None,
            fields=list(p.fields),
            body=dict(p.fields),
            if_enrolled=p.if_enrolled,
            state=(StepState.SKIPPED if declined else StepState.PENDING).value,
            attempts=0,
            next_attempt_at=now,
            last_error="consent declined by the citizen" if declined else None,
            idempotency_key=f"oo-procedure-{procedure_id}-{seq}",
            finished_at=now if declined else None,
        )


def same_address(registered: str, new: str) -> bool:
    """Whether two addresses are the same place as written (NFKC, spaces ignored)."""

    def norm(text: str) -> str:
        return "".join(unicodedata.normalize("NFKC", text).split())

    return norm(registered) == norm(new)
