"""Consent wire models: what a consent, a request, a use, a history event and a receipt look like.

Issue 5 "The consent": a consent names its subject (the citizen), the data providers (service
ids), the data consumer (a client subsystem), the purpose (a code plus plain-language text in
Japanese and English), the data fields, a validity window, a mode (one-time, or standing with an
optional count and frequency limit), how long the consumer may keep the data, its status and the
legal text version the citizen agreed to.

These are *wire* models (style rule 6): pydantic v2, frozen, ``extra="forbid"``; rows live in
``consent/store.py``. Trust assumption: ``ConsentRequestInput`` comes from a consumer and is
untrusted; everything is bounded and identifiers are parsed before anything stores them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from exchange.errors import ClientError
from exchange.identifiers import CLIENT_ID_PATTERN, SERVICE_ID_PATTERN, ClientId, ServiceId

__all__ = [
    "MAX_FIELDS",
    "MAX_SERVICES",
    "MAX_TEXT_LEN",
    "Consent",
    "ConsentHistoryEvent",
    "ConsentMode",
    "ConsentRequest",
    "ConsentRequestInput",
    "ConsentRequestStatus",
    "ConsentStatus",
    "ConsentUse",
    "GateAnswer",
    "GateRequest",
    "HistoryAction",
    "Purpose",
    "Receipt",
]

MAX_FIELDS = 64
MAX_SERVICES = 16
MAX_TEXT_LEN = 2000
MAX_USES_LIMIT = 1_000_000
MAX_MIN_INTERVAL_S = 366 * 24 * 3600
MAX_RETENTION_DAYS = 10 * 366
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
# The patterns the validators below check, stated in the JSON schema too (the OpenAPI documents
# describe what is accepted; the validators stay the authority).
_Name = Annotated[str, Field(pattern=NAME_PATTERN)]
_ServiceText = Annotated[str, Field(pattern=SERVICE_ID_PATTERN)]
_UNIQUE: JsonDict = {"uniqueItems": True}


class ConsentStatus(StrEnum):
    """A consent's status. ``expired`` and ``spent`` happen by themselves (derived at ``now``)."""

    ACTIVE = "active"
    PAUSED = "paused"
    REVOKED = "revoked"
    EXPIRED = "expired"
    SPENT = "spent"


class ConsentMode(StrEnum):
    """One-time: spent after one successful use. Standing: many uses, optionally limited."""

    ONE_TIME = "one-time"
    STANDING = "standing"


class ConsentRequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"


class HistoryAction(StrEnum):
    GRANTED = "granted"
    PAUSED = "paused"
    RESUMED = "resumed"
    REVOKED = "revoked"
    EXPIRED = "expired"
    SPENT = "spent"


_STORABLE_TEXT = "^[^\\u0000]*$"
"""The JSON Schema pattern of free text this service stores (``_Wire._storable_text``)."""


def _declare_storable_text(schema: dict[str, Any]) -> None:
    """Say in the JSON Schema what ``_storable_text`` checks: free text (a string property with no
    pattern of its own, alone or in an ``anyOf``) holds no NUL character."""
    for prop in schema.get("properties", {}).values():
        for branch in [prop, *prop.get("anyOf", ())]:
            if (
                branch.get("type") == "string"
                and "pattern" not in branch
                and "format" not in branch
            ):
                branch["pattern"] = _STORABLE_TEXT


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_declare_storable_text)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_text(cls, value: Any) -> Any:
        """Text a database can hold: no NUL (PostgreSQL refuses it in text) and no lone
        surrogate (not UTF-8), so such input is a 400 here, never a 500 at the database."""
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("text must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text must be valid Unicode (no lone surrogates)") from None
        return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


class Purpose(_Wire):
    """A purpose: a stable code the policies match on, and the text the citizen reads."""

    code: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    text_ja: str = Field(min_length=1, max_length=MAX_TEXT_LEN)
    text_en: str = Field(min_length=1, max_length=MAX_TEXT_LEN)

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("purpose code must be 1-64 of A-Z a-z 0-9 _ . -")
        return value


def _check_client(value: str) -> str:
    try:
        return str(ClientId.parse(value))
    except ClientError as exc:
        raise ValueError(exc.detail) from exc


def _check_services(value: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for text in value:
        try:
            out.append(str(ServiceId.parse(text)))
        except ClientError as exc:
            raise ValueError(exc.detail) from exc
    if len(set(out)) != len(out):
        raise ValueError("services must not repeat")
    return tuple(out)


def _check_fields(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not _NAME.match(name):
            raise ValueError(f"invalid field name {name[:80]!r}")
    if len(set(value)) != len(value):
        raise ValueError("fields must not repeat")
    return tuple(sorted(value))


class _Terms(_Wire):
    """What a consent covers; shared by the request (proposed) and the consent (granted)."""

    subject: str = Field(min_length=1, max_length=128)
    client: str = Field(pattern=CLIENT_ID_PATTERN)
    services: tuple[_ServiceText, ...] = Field(
        min_length=1, max_length=MAX_SERVICES, json_schema_extra=_UNIQUE
    )
    purpose: Purpose
    fields: tuple[_Name, ...] = Field(
        min_length=1, max_length=MAX_FIELDS, json_schema_extra=_UNIQUE
    )
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    mode: ConsentMode
    max_uses: int | None = Field(default=None, ge=1, le=MAX_USES_LIMIT)
    min_interval_s: int | None = Field(default=None, ge=1, le=MAX_MIN_INTERVAL_S)
    data_retention_days: int = Field(ge=0, le=MAX_RETENTION_DAYS)
    """How long the consumer may keep what it received (0: only for the transaction)."""
    legal_text_version: str = Field(min_length=1, max_length=64)

    @field_validator("client")
    @classmethod
    def _client(cls, value: str) -> str:
        return _check_client(value)

    @field_validator("services")
    @classmethod
    def _services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_services(value)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_fields(value)

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _times(cls, value: datetime) -> datetime:
        return _utc(value)

    @model_validator(mode="after")
    def _coherent(self) -> Any:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        if self.mode is ConsentMode.ONE_TIME and (
            self.max_uses is not None or self.min_interval_s is not None
        ):
            raise ValueError("max_uses and min_interval_s apply to standing consents only")
        return self


class ConsentRequestInput(_Terms):
    """What a consumer sends to ask for a consent (its own client id must match ``client``).

    ``subject_agency`` says whose code ``subject`` is: ``"citizen"`` (default) — the citizen's own
    platform id, as the one-stop desk knows them; ``"client"`` — the consumer's own pseudonym of
    the citizen, which the consent service resolves to the citizen through the central
    pseudonym translator (docs/consent.md "Requests through the node"). The stored request and
    what the citizen sees name the citizen; the answer to the consumer keeps its own code."""

    subject_agency: Literal["citizen", "client"] = "citizen"


class ConsentRequest(_Terms):
    """A consumer's request, shown to the citizen exactly as it would be granted."""

    id: str
    status: ConsentRequestStatus
    created_at: AwareDatetime
    decided_at: AwareDatetime | None = None
    consent_id: str | None = None


class Consent(_Terms):
    """A granted consent. ``status`` is as of the time it was read (expiry derived at ``now``)."""

    id: str
    status: ConsentStatus
    created_at: AwareDatetime
    updated_at: AwareDatetime
    use_count: int = Field(ge=0)
    last_used_at: AwareDatetime | None = None
    request_id: str | None = None
    artefact: str
    """The signed consent (compact JWS, ``typ`` ``onceonly-consent+jws``)."""


class ConsentHistoryEvent(_Wire):
    consent_id: str
    seq: int
    at: AwareDatetime
    action: HistoryAction
    from_status: ConsentStatus | None
    to_status: ConsentStatus
    actor: str
    """``subject`` (the citizen), ``system`` (expiry, spending) or a client id."""
    receipt_id: str | None = None


class ConsentUse(_Wire):
    """One exchange that relied on a consent: which exchange, when, which fields."""

    consent_id: str
    message_id: str
    at: AwareDatetime
    client: str
    service: str
    fields: tuple[str, ...]


class Receipt(_Wire):
    """A consent receipt for one grant or change: ``document`` holds the Kantara CR v1.1 form
    (``kantara``) and the ISO/IEC TS 27560 record (``iso27560``); ``jws`` is the document signed
    by the consent service (``None`` only for receipts issued before receipts were signed)."""

    id: str
    consent_id: str
    action: HistoryAction
    issued_at: AwareDatetime
    document: dict[str, Any]
    jws: str | None = None


class GateRequest(_Wire):
    """A provider node asks the consent service about one exchange (``POST …/gate/check|use``).

    There is no ``now``: the consent service uses its own clock, so a node cannot use an expired
    consent by claiming an earlier time.
    """

    consent_id: str = Field(min_length=1, max_length=64)
    artefact: str | None = Field(default=None, max_length=16 * 1024)
    subject: str | None = Field(default=None, max_length=128)
    client: str = Field(pattern=CLIENT_ID_PATTERN)
    service: str = Field(pattern=SERVICE_ID_PATTERN)
    purpose: str = Field(min_length=1, max_length=64)
    fields: tuple[str, ...] = Field(default=(), max_length=MAX_FIELDS)
    message_id: str = Field(min_length=1, max_length=200)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("client")
    @classmethod
    def _client(cls, value: str) -> str:
        return _check_client(value)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return _check_services((value,))[0]


class GateAnswer(_Wire):
    """The consent service's decision, as sent back to the provider node."""

    allow: bool
    consent_id: str
    fields: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    retention_days: int | None = Field(default=None, ge=0, le=MAX_RETENTION_DAYS)
    """The consent's data life (``data_retention_days``), for the response's usage terms."""
