"""Wire models of the procedures API: what the citizen sends and what they (and staff) see.

Pydantic v2, frozen, ``extra="forbid"`` (style rule 6); rows live in ``procedures/store.py``.
Trust assumption: ``AddressChangeInput`` and ``ConfirmInput`` come from the citizen's browser and
are untrusted: lengths are bounded here, meaning (dates, Machida address, property) is checked by
``procedures.address_change`` against ``now`` and the registries.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_ADDRESS_CHARS",
    "AddressChangeInput",
    "Basis",
    "ConfirmInput",
    "ProcedureStatus",
    "ProcedureView",
    "RecipientPreview",
    "StepResult",
    "StepState",
    "StepView",
]

MAX_ADDRESS_CHARS = 200
MAX_PROPERTY_NUMBER_CHARS = 24
MAX_RECIPIENTS = 16


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProcedureStatus(StrEnum):
    """``previewed`` (waiting for the citizen's confirmation) → ``running`` → ``done`` (every
    step done or not concerned) | ``partial`` (some step failed or was declined) | ``failed``
    (the resident record itself could not be changed)."""

    PREVIEWED = "previewed"
    RUNNING = "running"
    DONE = "done"
    PARTIAL = "partial"
    FAILED = "failed"


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    COMPENSATED = "compensated"


FINAL_STATES = frozenset(
    {StepState.DONE, StepState.FAILED, StepState.SKIPPED, StepState.COMPENSATED}
)

Basis = Literal["statute", "consent"]


class AddressChangeInput(_Wire):
    """Start an address change: the new address typed, or a property picked from the land
    registry (then the address is taken from the registry — once-only)."""

    move_date: date | None = None
    """Defaults to the property's transfer date when a property is picked."""
    address: str | None = Field(default=None, min_length=1, max_length=MAX_ADDRESS_CHARS)
    property_number: str | None = Field(
        default=None, min_length=1, max_length=MAX_PROPERTY_NUMBER_CHARS
    )


class ConfirmInput(_Wire):
    """The citizen's confirmation: a decision per private recipient (its consent request)."""

    consents: dict[str, Literal["approve", "decline"]] = Field(
        default_factory=dict, max_length=MAX_RECIPIENTS
    )


class RecipientPreview(_Wire):
    """One party concerned, exactly as the preview shows it."""

    recipient: str
    name_ja: str
    name_en: str
    service: str
    basis: Basis
    statute: str | None = None
    """The ordinance's id in the central registry's statutory bases."""
    statute_title_ja: str | None = None
    statute_title_en: str | None = None
    fields: dict[str, str]
    """Field → the value that will be sent."""
    if_enrolled: bool = False
    """True when the platform could not read whether the citizen is enrolled there: the change
    is sent, and "not enrolled" then means "not concerned"."""
    consent_request_id: str | None = None


class StepView(_Wire):
    seq: int
    recipient: str
    service: str
    basis: Basis
    statute: str | None
    consent_id: str | None
    fields: tuple[str, ...]
    state: StepState
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    result_hash: str | None
    finished_at: datetime | None
    told_by: str | None = None
    """Done without an exchange of its own: the change event of this change service told the
    recipient (docs/procedures.md, "Told by the change event")."""


class ProcedureView(_Wire):
    id: str
    kind: str
    status: ProcedureStatus
    move_date: date
    new_address: str
    address_source: Literal["typed", "land-registry"]
    current_address: str | None
    created_at: datetime
    recipients: tuple[RecipientPreview, ...]
    steps: tuple[StepView, ...] = ()
    duplicate: bool = False
    """True when this answer is for a submission seen before (not started twice)."""
    certificate_available: bool = False
    represented_party: str | None = None
    """``PARENT/<mandate id>`` (etc.) when a representative started it for the citizen."""
    acted_by: str | None = None
    """That representative (their subject); None when the citizen acted themself."""


class StepResult(_Wire):
    """One step's outcome, for ``onceonly demo`` and the benchmark."""

    recipient: str
    service: str
    basis: Basis
    state: StepState
    detail: str | None
    exchange_s: float | None
