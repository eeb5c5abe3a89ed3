"""What the portal needs of the services behind it: the consent service and its log, each node's
access log and the one-stop desk (issue 13 "No component opens another component's database").

Each port has two implementations: in-process (``portal.local``: ``onceonly serve`` and the
tests) and over HTTP (``portal.remote``: ``onceonly portal``, which opens no database). Every call
carries the signed-in ``Caller``: the in-process services use the principal's subject, the HTTP
clients forward the bearer token, so the owning service decides what the caller may see.

Trust assumption: an implementation reports what its service *says*. Nothing here is trusted as a
proof: ``ProvenEntry`` carries the entry's bytes, an inclusion proof and a signed checkpoint, and
the portal verifies them itself (``portal.app.verify_proven``) with a log key it pins.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from audit.checkpoint import NoteVerifier
from audit.log import EntryQuery, StoredCheckpoint
from consent.mandates import Mandate
from consent.model import Consent, ConsentRequest, Receipt
from exchange.tokens import Principal
from procedures.model import AddressChangeInput, ConfirmInput, ProcedureView

__all__ = [
    "AccessLog",
    "AlertsBackend",
    "Caller",
    "ConsentBackend",
    "ConsentLog",
    "LogRecord",
    "ProcedureDesk",
    "ProvenEntry",
]


@dataclass(frozen=True, slots=True)
class Caller:
    """The signed-in person: their verified principal and the bearer token it came from."""

    principal: Principal
    token: str
    acting_for: str | None = None
    """A mandate id: the person acts for the one it represents (backends check it each time)."""

    @property
    def subject(self) -> str:
        return self.principal.subject


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log entry as a page shows it (not verified: pages verify with ``ProvenEntry``)."""

    index: int
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CitizenRecord:
    """Everything one node's log holds about the caller, as the node sent it (unverified).

    ``completeness`` is the node's ``/me/accesses`` completeness object (a signed checkpoint and
    one proof per subject; ``audit.completeness``) or None when the caller has no subject there;
    ``truncated`` is true when there were more entries than the portal reads, so the record
    cannot be proven complete."""

    records: list[LogRecord]
    completeness: Mapping[str, Any] | None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ProvenEntry:
    """An entry's exact leaf bytes with an inclusion proof and the checkpoint it is against
    (``None`` while no checkpoint covers it yet)."""

    index: int
    data: bytes
    proof: tuple[bytes, ...] = ()
    checkpoint: str | None = None
    checkpoint_time: datetime | None = None


class ConsentBackend(Protocol):
    """The citizen's side of the consent service (consent/api.py's citizen API)."""

    def list_consents(self, caller: Caller) -> list[Consent]: ...

    def get_consent(self, caller: Caller, consent_id: str) -> Consent: ...

    def list_requests(self, caller: Caller) -> list[ConsentRequest]: ...

    def approve_request(self, caller: Caller, request_id: str) -> Consent: ...

    def decline_request(self, caller: Caller, request_id: str) -> ConsentRequest: ...

    def pause(self, caller: Caller, consent_id: str) -> Consent: ...

    def resume(self, caller: Caller, consent_id: str) -> Consent: ...

    def revoke(self, caller: Caller, consent_id: str) -> Consent: ...

    def receipts(self, caller: Caller, consent_id: str) -> list[Receipt]: ...

    def list_mandates(self, caller: Caller) -> list[Mandate]:
        """The mandates the signed-in person holds or is represented by (never "acting")."""
        ...


class AccessLog(Protocol):
    """One node's transparency log (audit/api.py): the citizen's accesses, the auditor's view."""

    @property
    def verifier(self) -> NoteVerifier:
        """The log's key as the portal pins it (never one the node hands out)."""
        ...

    def my_record(self, caller: Caller, *, limit: int) -> CitizenRecord:
        """Entries about the caller, oldest first, at most ``limit``, with the completeness proof."""
        ...

    def my_entry(self, caller: Caller, index: int) -> ProvenEntry:
        """Entry ``index`` if it is about the caller; ``NotFoundError`` otherwise (no oracle)."""
        ...

    def search(
        self, caller: Caller, query: EntryQuery, *, limit: int, cursor: int | None = None
    ) -> tuple[list[LogRecord], int | None]:
        """Auditors: matching entries in index order and the cursor of the next page."""
        ...

    def entry(self, caller: Caller, index: int) -> ProvenEntry: ...

    def size(self, caller: Caller) -> int: ...

    def export(self, caller: Caller, start: int, end: int) -> Iterator[str]:
        """Entries ``[start, end)`` as JSON Lines without newlines (``audit.log`` format)."""
        ...

    def checkpoints(self, caller: Caller, *, limit: int) -> list[StoredCheckpoint]:
        """Checkpoint history, newest first (unverified: the portal checks each note)."""
        ...

    def consistency_proof(self, caller: Caller, first: int, second: int) -> list[bytes]: ...


class ConsentLog(Protocol):
    """The consent service's own transparency log (``/consent/v1/log``, audit/api.py's routes):
    the citizen's consent history — grants, changes, uses, refusals — each with its proof."""

    @property
    def verifier(self) -> NoteVerifier:
        """The consent log's key as the portal pins it (``onceonly audit key consent-service``)."""
        ...

    def my_proven_entries(self, caller: Caller, *, limit: int) -> list[ProvenEntry]:
        """Entries about the caller, oldest first, at most ``limit``, each with its inclusion
        proof and the signed checkpoint it is against (unverified: the portal checks them)."""
        ...

    def my_record(self, caller: Caller, *, limit: int) -> CitizenRecord:
        """The caller's entries with the log's completeness proof (as ``AccessLog.my_record``)."""
        ...


class ProcedureDesk(Protocol):
    """The one-stop desk's address change (procedures/api.py)."""

    async def start(
        self, caller: Caller, data: AddressChangeInput, *, submission_key: str | None = None
    ) -> ProcedureView: ...

    def get(self, caller: Caller, procedure_id: str) -> ProcedureView: ...

    def list_for(self, caller: Caller) -> list[ProcedureView]: ...

    def confirm(
        self, caller: Caller, procedure_id: str, decisions: ConfirmInput
    ) -> ProcedureView: ...


class AlertsBackend(Protocol):
    """One node's alerts for the caller (``alerts/api.py``, ``/me/alerts…``): the inbox, newest
    first, and the caller's alert settings at that node."""

    def list_alerts(self, caller: Caller, *, limit: int) -> dict[str, Any]:
        """``{"alerts": [...], "unread": n, "next_cursor": …}`` as the node's API answers."""
        ...

    def mark_read(self, caller: Caller, alert_id: int) -> None: ...

    def settings(self, caller: Caller) -> dict[str, Any]:
        """``{"enabled": {rule: bool}, "email": str | None}``."""
        ...

    def save_settings(
        self, caller: Caller, enabled: Mapping[str, bool], email: str | None
    ) -> dict[str, Any]: ...
