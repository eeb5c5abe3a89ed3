"""The portal's ports over in-process services (``onceonly serve``, the demo and the tests).

Trust assumption: the services run in this process, so the caller's subject is passed to them
directly; isolation is theirs (``ConsentService`` answers "not found" for another subject's ids)
and, for the logs, ``subjects_of`` (the pseudonyms a citizen is known by) decides which entries
are the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

from alerts.inbox import AlertInbox
from alerts.worker import citizen_key
from audit.checkpoint import NoteVerifier
from audit.log import EntryQuery, StoredCheckpoint, TransparencyLog
from consent.lifecycle import ConsentService, OnBehalf, utc_now
from consent.mandates import Mandate, acting_actor
from consent.model import Consent, ConsentRequest, Receipt
from exchange.errors import NotFoundError
from exchange.tokens import Principal
from portal.ports import Caller, CitizenRecord, LogRecord, ProvenEntry
from procedures.address_change import Acting, AddressChangeService
from procedures.model import AddressChangeInput, ConfirmInput, ProcedureView

__all__ = ["LocalAlerts", "LocalConsent", "LocalDesk", "LocalLog", "local_logs", "proven"]

Clock = Callable[[], datetime]


class LocalConsent:
    """``portal.ports.ConsentBackend`` over a ``ConsentService`` in this process."""

    def __init__(self, service: ConsentService, *, clock: Clock = utc_now) -> None:
        self._service = service
        self._mandates = service.mandates()
        self._clock = clock

    def _whose(self, caller: Caller, action: str) -> str:
        """The subject the caller acts on: their own, or the one their mandate represents
        (checked now; a refusal is audited by the mandate service)."""
        if caller.acting_for is None:
            return caller.subject
        return self._mandates.authorise(
            caller.subject, caller.acting_for, now=self._clock(), action=action
        ).represented

    def _behalf(
        self, caller: Caller, action: str, purpose_of: Callable[[str], str]
    ) -> tuple[str, OnBehalf | None]:
        if caller.acting_for is None:
            return caller.subject, None
        represented = self._whose(caller, action)
        mandate = self._mandates.authorise(
            caller.subject,
            caller.acting_for,
            now=self._clock(),
            action=action,
            purpose=purpose_of(represented),
        )
        return represented, OnBehalf(acting_actor(mandate), mandate.id, mandate.represented_party)

    def _consent_purpose(self, consent_id: str) -> Callable[[str], str]:
        return lambda s: self._service.get_consent(s, consent_id, now=self._clock()).purpose.code

    def _request_purpose(self, request_id: str) -> Callable[[str], str]:
        return lambda s: self._service.get_request(s, request_id, now=self._clock()).purpose.code

    def list_consents(self, caller: Caller) -> list[Consent]:
        return self._service.list_consents(self._whose(caller, "list consents"), now=self._clock())

    def get_consent(self, caller: Caller, consent_id: str) -> Consent:
        subject = self._whose(caller, "read a consent")
        return self._service.get_consent(subject, consent_id, now=self._clock())

    def list_requests(self, caller: Caller) -> list[ConsentRequest]:
        subject = self._whose(caller, "list consent requests")
        return self._service.list_requests(subject, now=self._clock())

    def approve_request(self, caller: Caller, request_id: str) -> Consent:
        subject, on_behalf = self._behalf(
            caller, "approve a consent request", self._request_purpose(request_id)
        )
        return self._service.approve_request(
            subject, request_id, now=self._clock(), on_behalf=on_behalf
        )

    def decline_request(self, caller: Caller, request_id: str) -> ConsentRequest:
        subject, _ = self._behalf(
            caller, "decline a consent request", self._request_purpose(request_id)
        )
        return self._service.decline_request(subject, request_id, now=self._clock())

    def _change(self, caller: Caller, consent_id: str, verb: str) -> Consent:
        subject, on_behalf = self._behalf(
            caller, f"{verb} a consent", self._consent_purpose(consent_id)
        )
        change = getattr(self._service, verb)
        done: Consent = change(subject, consent_id, now=self._clock(), on_behalf=on_behalf)
        return done

    def pause(self, caller: Caller, consent_id: str) -> Consent:
        return self._change(caller, consent_id, "pause")

    def resume(self, caller: Caller, consent_id: str) -> Consent:
        return self._change(caller, consent_id, "resume")

    def revoke(self, caller: Caller, consent_id: str) -> Consent:
        return self._change(caller, consent_id, "revoke")

    def receipts(self, caller: Caller, consent_id: str) -> list[Receipt]:
        subject = self._whose(caller, "read a consent's receipts")
        return self._service.receipts(subject, consent_id, now=self._clock())

    def list_mandates(self, caller: Caller) -> list[Mandate]:
        return self._mandates.list_for(caller.subject, now=self._clock())


def proven(log: TransparencyLog, index: int) -> ProvenEntry:
    """Entry ``index`` with its proof against the log's latest checkpoint, if one covers it."""
    entry = log.entry(index)
    stored = log.latest_checkpoint()
    if stored is None or stored.size <= index:
        return ProvenEntry(index, entry.data)
    proof = log.inclusion_proof(index, stored.size)
    return ProvenEntry(index, entry.data, tuple(proof), stored.note, stored.time)


class LocalLog:
    """``portal.ports.AccessLog`` (and ``ConsentLog``) over a ``TransparencyLog`` in this
    process."""

    def __init__(
        self, log: TransparencyLog, subjects_of: Callable[[Principal], Collection[str]]
    ) -> None:
        self._log = log
        self._subjects_of = subjects_of

    @property
    def verifier(self) -> NoteVerifier:
        return self._log.verifier()

    def _subjects(self, caller: Caller) -> frozenset[str]:
        return frozenset(self._subjects_of(caller.principal))

    def my_record(self, caller: Caller, *, limit: int) -> CitizenRecord:
        subjects = self._subjects(caller)
        if not subjects:
            return CitizenRecord([], None)
        cp, proofs = self._log.completeness(subjects, utc_now())
        page = self._log.search(EntryQuery(subjects=subjects), limit=limit)
        completeness = {"checkpoint": cp.note, "proofs": [p.to_json() for p in proofs]}
        # a release entry comes with the restricted entry it releases (audit.restricted)
        originals = self._log.released_originals(page.entries)
        records = [LogRecord(e.index, e.record) for e in page.entries]
        records += [LogRecord(o.index, o.record) for o in originals.values()]
        return CitizenRecord(records, completeness, truncated=page.next_cursor is not None)

    def my_proven_entries(self, caller: Caller, *, limit: int) -> list[ProvenEntry]:
        """``portal.ports.ConsentLog``: the caller's entries, each against the latest checkpoint
        (pending while none covers it yet)."""
        subjects = self._subjects(caller)
        if not subjects:
            return []
        page = self._log.search(EntryQuery(subjects=subjects), limit=limit)
        return [proven(self._log, e.index) for e in page.entries]

    def my_entry(self, caller: Caller, index: int) -> ProvenEntry:
        entry = self._log.entry(index)
        subjects = self._subjects(caller)
        # Another citizen's entry, or a restricted one not yet released to the caller, is "not
        # found", like an unknown one (no oracle).
        if entry.record.get("subject") not in subjects:
            release = self._log.release_of(index) if "subject_commitment" in entry.record else None
            if release is None or release.record.get("subject") not in subjects:
                raise NotFoundError("no such record")
        return proven(self._log, index)

    def search(
        self, caller: Caller, query: EntryQuery, *, limit: int, cursor: int | None = None
    ) -> tuple[list[LogRecord], int | None]:
        page = self._log.search(query, limit=limit, cursor=cursor)
        return [LogRecord(e.index, e.record) for e in page.entries], page.next_cursor

    def entry(self, caller: Caller, index: int) -> ProvenEntry:
        return proven(self._log, index)

    def size(self, caller: Caller) -> int:
        return self._log.size()

    def export(self, caller: Caller, start: int, end: int) -> Iterator[str]:
        return self._log.export(start, end)

    def checkpoints(self, caller: Caller, *, limit: int) -> list[StoredCheckpoint]:
        return self._log.checkpoints(limit=limit)

    def consistency_proof(self, caller: Caller, first: int, second: int) -> list[bytes]:
        return self._log.consistency_proof(first, second)


def local_logs(
    logs: Mapping[str, TransparencyLog], subjects_of: Callable[[Principal], Collection[str]]
) -> dict[str, LocalLog]:
    return {node: LocalLog(log, subjects_of) for node, log in logs.items()}


class LocalDesk:
    """``portal.ports.ProcedureDesk`` over an ``AddressChangeService`` in this process."""

    def __init__(self, service: AddressChangeService, *, clock: Clock = utc_now) -> None:
        self._service = service
        self._clock = clock

    def _whom(self, caller: Caller) -> tuple[str, Acting | None]:
        if caller.acting_for is None:
            return caller.subject, None
        return self._service.act_for(
            caller.subject, caller.acting_for, token=caller.token, now=self._clock()
        )

    async def start(
        self, caller: Caller, data: AddressChangeInput, *, submission_key: str | None = None
    ) -> ProcedureView:
        subject, acting = await asyncio.to_thread(self._whom, caller)
        return await self._service.start(
            subject, data, now=self._clock(), submission_key=submission_key, acting=acting
        )

    def get(self, caller: Caller, procedure_id: str) -> ProcedureView:
        return self._service.get(procedure_id, subject=self._whom(caller)[0])

    def list_for(self, caller: Caller) -> list[ProcedureView]:
        return self._service.list_for(self._whom(caller)[0])

    def confirm(self, caller: Caller, procedure_id: str, decisions: ConfirmInput) -> ProcedureView:
        subject, acting = self._whom(caller)
        return self._service.confirm(
            subject, procedure_id, decisions, now=self._clock(), acting=acting
        )


class LocalAlerts:
    """``portal.ports.AlertsBackend`` over one node's ``AlertInbox`` in this process; the caller's
    subject keys come from ``subjects_of`` (the pseudonyms the node's log knows them by)."""

    def __init__(
        self,
        inbox: AlertInbox,
        origin: str,
        subjects_of: Callable[[Principal], Collection[str]],
    ) -> None:
        self._inbox = inbox
        self._origin = origin
        self._subjects_of = subjects_of

    def _keys(self, caller: Caller) -> frozenset[str]:
        return frozenset(citizen_key(self._origin, s) for s in self._subjects_of(caller.principal))

    def list_alerts(self, caller: Caller, *, limit: int) -> dict[str, Any]:
        alerts, next_cursor, unread = self._inbox.list(self._keys(caller), limit=limit, before=None)
        return {"alerts": alerts, "unread": unread, "next_cursor": next_cursor}

    def mark_read(self, caller: Caller, alert_id: int) -> None:
        self._inbox.mark_read(self._keys(caller), alert_id)

    def settings(self, caller: Caller) -> dict[str, Any]:
        s = self._inbox.settings(self._keys(caller))
        return {"enabled": s.enabled, "email": s.email}

    def save_settings(
        self, caller: Caller, enabled: Mapping[str, bool], email: str | None
    ) -> dict[str, Any]:
        s = self._inbox.save_settings(self._keys(caller), dict(enabled), email)
        return {"enabled": s.enabled, "email": s.email}
