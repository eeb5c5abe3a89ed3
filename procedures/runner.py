"""The durable workflow runner of procedures (issue 7 "Run"; DESIGN "Storage and scale").

Steps are rows (``procedures.store.StepRow``); any number of runners, in any process or replica,
share them through the database:

(R1) **claim** due steps: ``pending`` with ``next_attempt_at <= now``, or ``running`` whose lease
     ran out (its runner crashed) — and only once every step of an earlier order group of the same
     procedure is ``done`` (the resident record first, then the rest in parallel). PostgreSQL:
     ``SELECT … FOR UPDATE SKIP LOCKED`` so replicas never wait on each other; SQLite: a guarded
     ``UPDATE … WHERE id = … AND <still claimable>`` whose row count says who won. A claim sets
     ``claimed_by``, ``lease_until`` and counts the attempt.
(R1b) **heartbeat**: while a runner's steps are in flight it renews their leases every
     ``HEARTBEAT_S`` (guarded like R3: only steps still ``running``, ``claimed_by`` it, on the same
     attempt). A live slow step thus keeps its lease however long the exchange takes, and a
     crashed runner's steps are free after at most ``LEASE_S`` — seconds, not minutes.
(R2) **execute** the step as one signed exchange through the one-stop node, with the step's own
     ``Idempotency-Key``: if the same step is sent again (retry after a lost answer, a runner that
     crashed after sending), the registry answers with its first result and changes nothing twice.
(R3) **complete** under the same guard (``claimed_by`` and attempt still ours): a runner whose lease
     was taken over cannot overwrite the new owner's outcome. ``ok`` → done (SHA-256 of the answer
     kept); transient (5xx, no connection) → pending again after exponential backoff
     (``BASE_BACKOFF_S`` · 2^(attempt-1), capped at ``MAX_BACKOFF_S``), failed after
     ``MAX_ATTEMPTS``; refused (403/400/409/404 other than "not enrolled") → failed with the
     reason, without undoing other steps; "not enrolled" where enrolment was not known → skipped.
     If the resident record itself fails, the notifications that would follow it are skipped:
     nobody is told of an address the resident registry does not hold.
(R4) **finish**: when every step is final the procedure becomes done / partial / failed and gets a
     summary signed with the platform key (``procedures.certificate``); a guarded update makes
     exactly one runner write it.

Every completed step is also an ``AuditEvent`` of kind ``procedure.step`` (the exchanges themselves
are audited by the nodes). Time is a parameter: ``run_once(now=…)``.

Trust assumption: the database is shared only by trusted runners; the one-stop node is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from adapters.reference.rights import ONE_STOP
from exchange.canonical import canonical_json
from exchange.db import as_unavailable
from exchange.identifiers import ServiceId
from exchange.ports import AuditEvent, AuditSink
from exchange.signing import Signer
from procedures.certificate import sign_certificate
from procedures.metrics import RunnerMetrics
from procedures.model import FINAL_STATES, ProcedureStatus, StepState
from procedures.one_stop import ADDRESS_CHANGE_PURPOSE, ExchangeOutcome, OneStopClient, represented
from procedures.store import ProcedureRow, StepRow

__all__ = [
    "BASE_BACKOFF_S",
    "HEARTBEAT_S",
    "LEASE_S",
    "MAX_ATTEMPTS",
    "MAX_BACKOFF_S",
    "ClaimedStep",
    "ProcedureRunner",
    "backoff_s",
]

LEASE_S = 10.0
"""A claimed step whose lease was not renewed within this time is another runner's to take."""
HEARTBEAT_S = 3.0
"""How often a runner renews the leases of its steps in flight (a third of the lease: two
heartbeats may be lost to a slow database before a live step can be taken over)."""
BASE_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
MAX_ATTEMPTS = 40
"""With the backoff cap: a provider may be down for about three hours before a step fails."""
CLAIM_BATCH = 32
IDLE_POLL_S = 0.5
MAX_REASON_CHARS = 500
_log = logging.getLogger("onceonly.procedures.runner")


def backoff_s(
    attempt: int, *, base_s: float = BASE_BACKOFF_S, cap_s: float = MAX_BACKOFF_S
) -> float:
    """Delay before the next attempt after ``attempt`` transient failures (1, 2, 4, … capped)."""
    return float(min(cap_s, base_s * 2 ** max(0, attempt - 1)))


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ClaimedStep:
    """A step this runner holds the lease of, with what it needs to send it."""

    id: str
    procedure_id: str
    seq: int
    order_group: int
    recipient: str
    subject: str
    service: str
    fields: tuple[str, ...]
    body: dict[str, Any]
    idempotency_key: str
    consent_id: str | None
    consent_artefact: str | None
    if_enrolled: bool
    attempt: int
    represented_party: str | None = None
    """The procedure was started for its citizen by a representative (``X-Road-Represented-Party``)."""


class ProcedureRunner:
    """Claims, executes and completes due steps. Safe to run many at once (see R1–R4)."""

    def __init__(
        self,
        engine: Engine,
        client: OneStopClient,
        signer: Signer,
        *,
        runner_id: str | None = None,
        audit: AuditSink | None = None,
        lease_s: float = LEASE_S,
        heartbeat_s: float | None = None,
        metrics: RunnerMetrics | None = None,
        base_backoff_s: float = BASE_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        max_attempts: int = MAX_ATTEMPTS,
        batch: int = CLAIM_BATCH,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._engine = engine
        self._client = client
        self._signer = signer
        self.runner_id = runner_id or f"runner-{uuid.uuid4().hex[:12]}"
        self._audit = audit
        self._lease = timedelta(seconds=lease_s)
        self._heartbeat_s = (
            heartbeat_s if heartbeat_s is not None else lease_s * HEARTBEAT_S / LEASE_S
        )
        if not 0 < self._heartbeat_s < lease_s:
            raise ValueError("the heartbeat must be shorter than the lease")
        self.metrics = metrics or RunnerMetrics(engine)
        self._base_backoff_s = base_backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_attempts = max_attempts
        self._batch = batch
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    # (R1) ---------------------------------------------------------------------------------------

    @staticmethod
    def _claimable(now: datetime) -> Any:
        earlier = aliased(StepRow)
        blocked = exists().where(
            earlier.procedure_id == StepRow.procedure_id,
            earlier.order_group < StepRow.order_group,
            earlier.state != StepState.DONE.value,
        )
        return and_(
            or_(
                and_(
                    StepRow.state == StepState.PENDING.value,
                    StepRow.next_attempt_at <= now,
                ),
                and_(StepRow.state == StepState.RUNNING.value, StepRow.lease_until < now),
            ),
            ~blocked,
        )

    def claim(self, now: datetime) -> list[ClaimedStep]:
        """Claim up to ``batch`` due steps for this runner."""
        claimed: list[ClaimedStep] = []
        lease_until = now + self._lease
        with Session(self._engine) as session, session.begin():
            query = (
                select(StepRow.id, StepRow.state)
                .where(self._claimable(now))
                .order_by(StepRow.next_attempt_at, StepRow.seq)
                .limit(self._batch)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True, of=StepRow)
            found = [(row.id, row.state) for row in session.execute(query).all()]
            for step_id, state_before in found:
                # The guard repeats the claim condition: on SQLite another runner may have won.
                won = session.execute(
                    update(StepRow)
                    .where(StepRow.id == step_id, self._claimable(now))
                    .values(
                        state=StepState.RUNNING.value,
                        claimed_by=self.runner_id,
                        lease_until=lease_until,
                        attempts=StepRow.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                self.metrics.claimed.inc()
                if state_before == StepState.RUNNING.value:  # its runner's lease ran out
                    self.metrics.reclaimed.inc()
                row = session.get(StepRow, step_id, populate_existing=True)
                assert row is not None
                proc = session.get(ProcedureRow, row.procedure_id)
                assert proc is not None
                claimed.append(
                    ClaimedStep(
                        id=row.id,
                        procedure_id=row.procedure_id,
                        seq=row.seq,
                        order_group=row.order_group,
                        recipient=row.recipient,
                        subject=proc.subject,
                        service=row.service,
                        fields=tuple(row.fields),
                        body=dict(row.body),
                        idempotency_key=row.idempotency_key,
                        consent_id=row.consent_id,
                        consent_artefact=row.consent_artefact,
                        if_enrolled=row.if_enrolled,
                        attempt=row.attempts,
                        represented_party=proc.represented_party,
                    )
                )
        return claimed

    # (R1b) --------------------------------------------------------------------------------------

    def renew(self, steps: Sequence[ClaimedStep], now: datetime) -> int:
        """Extend the leases of ``steps`` that are still ours; returns how many were."""
        renewed = 0
        with Session(self._engine) as session, session.begin():
            for step in steps:
                result = session.execute(
                    update(StepRow)
                    .where(
                        StepRow.id == step.id,
                        StepRow.state == StepState.RUNNING.value,
                        StepRow.claimed_by == self.runner_id,
                        StepRow.attempts == step.attempt,
                    )
                    .values(lease_until=now + self._lease)
                    .execution_options(synchronize_session=False)
                )
                renewed += result.rowcount  # type: ignore[attr-defined]
        self.metrics.renewals.inc(renewed)
        self.metrics.lost.inc(len(steps) - renewed)
        return renewed

    async def _heartbeat(self, in_flight: dict[str, ClaimedStep], base: datetime | None) -> None:
        """Renew the leases of the steps in flight every ``heartbeat_s`` until cancelled.

        ``base`` is the ``now`` of ``run_once`` when time is a parameter: the heartbeat then moves
        on from it by the real time elapsed, so leases stay consistent with the claim."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(self._heartbeat_s)
            steps = list(in_flight.values())
            if not steps:
                continue
            now = (
                base + timedelta(seconds=time.monotonic() - started)
                if base is not None
                else self._clock()
            )
            try:
                await asyncio.to_thread(self.renew, steps, now)
            except Exception as exc:  # keep beating: the database may be back before the lease ends
                if as_unavailable(exc) is None:
                    raise
                self.metrics.database_unavailable.inc()
                _log.warning("lease heartbeat failed: the database is unavailable")

    # (R2) ---------------------------------------------------------------------------------------

    async def execute(self, step: ClaimedStep) -> ExchangeOutcome:
        """Send the step as one signed exchange (same idempotency key on every attempt)."""
        with represented(step.represented_party):
            return await self._change(step)

    async def _change(self, step: ClaimedStep) -> ExchangeOutcome:
        return await self._client.change(
            step.service,
            step.subject,
            step.body,
            idempotency_key=step.idempotency_key,
            fields=step.fields,
            consent_id=step.consent_id,
            consent_artefact=step.consent_artefact,
        )

    # (R3) ---------------------------------------------------------------------------------------

    def complete(self, step: ClaimedStep, outcome: ExchangeOutcome, now: datetime) -> str | None:
        """Record the outcome; returns the new state, or None when the lease was lost."""
        values: dict[str, Any] = {"claimed_by": None, "lease_until": None}
        if outcome.kind == "ok":
            state = StepState.DONE
            values.update(
                result_hash=hashlib.sha256(canonical_json(outcome.data)).hexdigest(),
                result=outcome.data if isinstance(outcome.data, dict) else {"data": outcome.data},
                exchange_s=outcome.elapsed_s,
                message_id=outcome.message_id,
                last_error=None,
            )
        elif outcome.kind == "not-enrolled" and step.if_enrolled:
            state = StepState.SKIPPED
            values["last_error"] = "not enrolled there: not concerned"
        elif outcome.kind == "transient" and step.attempt < self._max_attempts:
            state = StepState.PENDING
            delay = backoff_s(step.attempt, base_s=self._base_backoff_s, cap_s=self._max_backoff_s)
            values.update(
                next_attempt_at=now + timedelta(seconds=delay),
                last_error=f"attempt {step.attempt}: {outcome.reason}",
            )
        elif outcome.kind == "transient":
            state = StepState.FAILED
            values["last_error"] = f"gave up after {step.attempt} attempts: {outcome.reason}"
        else:
            state = StepState.FAILED
            values["last_error"] = outcome.reason
        if state in FINAL_STATES:
            values["finished_at"] = now
        values["state"] = state.value
        if values.get("last_error"):
            values["last_error"] = str(values["last_error"])[:MAX_REASON_CHARS]
        with Session(self._engine) as session, session.begin():
            mine = session.execute(
                update(StepRow)
                .where(
                    StepRow.id == step.id,
                    StepRow.state == StepState.RUNNING.value,
                    StepRow.claimed_by == self.runner_id,
                    StepRow.attempts == step.attempt,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if mine.rowcount != 1:  # type: ignore[attr-defined]
                self.metrics.lost.inc()
                return None  # our lease was taken over: the new owner decides
            if state is StepState.DONE and step.order_group == 0 and outcome.told:
                _told_by_event(session, step, outcome.told, now)
            if state is StepState.FAILED and step.order_group == 0:
                session.execute(
                    update(StepRow)
                    .where(
                        StepRow.procedure_id == step.procedure_id,
                        StepRow.order_group > 0,
                        StepRow.state == StepState.PENDING.value,
                    )
                    .values(
                        state=StepState.SKIPPED.value,
                        last_error="not sent: the resident record could not be changed",
                        finished_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
        self.metrics.completed.labels(state.value).inc()
        if state is StepState.PENDING:
            self.metrics.retries.inc()
        self._record(step, state, outcome, now, values.get("last_error"))
        return state.value

    def _record(
        self,
        step: ClaimedStep,
        state: StepState,
        outcome: ExchangeOutcome,
        now: datetime,
        reason: str | None,
    ) -> None:
        if self._audit is None:
            return
        decision = {
            StepState.DONE: "allow",
            StepState.FAILED: "deny",
            StepState.PENDING: "error",
        }.get(state, "info")
        self._audit.record(
            AuditEvent(
                time=now,
                node=str(ONE_STOP.member),
                kind="procedure.step",
                decision=decision,  # type: ignore[arg-type]
                client=str(ONE_STOP),
                service=step.service,
                purpose=ADDRESS_CHANGE_PURPOSE,
                subject=step.subject,
                consent_id=step.consent_id,
                reason=reason,
                message_id=outcome.message_id,
                status=outcome.status,
                extra={
                    "procedure": step.procedure_id,
                    "step": str(step.seq),
                    "state": state.value,
                    "attempt": str(step.attempt),
                },
            )
        )

    # (R4) ---------------------------------------------------------------------------------------

    def finish(self, procedure_id: str, now: datetime) -> str | None:
        """If every step is final: the procedure's final status and signed summary (once)."""
        with Session(self._engine) as session:
            proc = session.get(ProcedureRow, procedure_id)
            if proc is None or proc.status != ProcedureStatus.RUNNING.value:
                return None
            steps = sorted(
                session.scalars(select(StepRow).where(StepRow.procedure_id == procedure_id)),
                key=lambda s: s.seq,
            )
            if not all(StepState(s.state) in FINAL_STATES for s in steps):
                return None
            status = _final_status(steps)
            certificate = sign_certificate(_summary(proc, steps, status, now), self._signer)
        with Session(self._engine) as session, session.begin():
            won = session.execute(
                update(ProcedureRow)
                .where(
                    ProcedureRow.id == procedure_id,
                    ProcedureRow.status == ProcedureStatus.RUNNING.value,
                )
                .values(status=status.value, result=certificate, finished_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                return None
        return status.value

    # -- loops ------------------------------------------------------------------------------------

    async def _process(
        self, step: ClaimedStep, now: datetime | None, in_flight: dict[str, ClaimedStep]
    ) -> None:
        try:
            outcome = await self.execute(step)
        finally:
            in_flight.pop(step.id, None)  # its lease needs no more renewing
        at = now or self._clock()
        state = await asyncio.to_thread(self.complete, step, outcome, at)
        if state is not None and StepState(state) in FINAL_STATES:
            await asyncio.to_thread(self.finish, step.procedure_id, at)

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim the due steps and carry them out concurrently; returns how many were run."""
        steps = await asyncio.to_thread(self.claim, now or self._clock())
        if not steps:
            return 0
        in_flight = {s.id: s for s in steps}
        heartbeat = asyncio.create_task(self._heartbeat(in_flight, now))
        try:
            # Every step runs to its end (and keeps its heartbeat) even if another one fails.
            results = await asyncio.gather(
                *(self._process(s, now, in_flight) for s in steps), return_exceptions=True
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(steps)

    async def run_forever(self, stop: asyncio.Event, *, idle_s: float = IDLE_POLL_S) -> None:
        """Run until ``stop`` is set; waits ``idle_s`` between rounds that found nothing due."""
        while not stop.is_set():
            try:
                ran = await self.run_once()
            except Exception as exc:  # the database is away: wait and try again, never stop
                if as_unavailable(exc) is None:
                    raise
                self.metrics.database_unavailable.inc()
                _log.warning("runner round skipped: the database is unavailable")
                ran = 0
            if ran == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle_s)


NOTIFICATION_CODE = "address-notification"
"""The service of the recipients that only need to be told (docs/procedures.md)."""


def _told_by_event(session: Session, step: ClaimedStep, told: Sequence[str], now: datetime) -> None:
    """The resident registry's change event told these subscribers already (docs/protocol.md
    §9): their pending notification steps are done without a second exchange."""
    pending = session.scalars(
        select(StepRow).where(
            StepRow.procedure_id == step.procedure_id,
            StepRow.order_group > 0,
            StepRow.state == StepState.PENDING.value,
        )
    ).all()
    for row in pending:
        service = ServiceId.parse(row.service)
        if service.code == NOTIFICATION_CODE and str(service.provider) in told:
            row.state = StepState.DONE.value
            row.finished_at = now
            row.result = {"told_by": step.service, "event": "change event"}
            row.last_error = None


def _final_status(steps: Sequence[StepRow]) -> ProcedureStatus:
    resident = [s for s in steps if s.order_group == 0]
    if any(s.state != StepState.DONE.value for s in resident):
        return ProcedureStatus.FAILED
    if any(s.state == StepState.FAILED.value for s in steps):
        return ProcedureStatus.PARTIAL
    return ProcedureStatus.DONE


def _summary(
    proc: ProcedureRow, steps: Sequence[StepRow], status: ProcedureStatus, now: datetime
) -> dict[str, Any]:
    plan = proc.plan
    return {
        "procedure": proc.id,
        "kind": proc.kind,
        "subject": proc.subject,
        "platform": str(ONE_STOP),
        "issued_at": _iso(now),
        "status": status.value,
        "move_date": plan["move_date"],
        "new_address": plan["new_address"],
        "previous_address": plan.get("current_address"),
        "steps": [
            {
                "recipient": s.recipient,
                "service": s.service,
                "basis": s.basis,
                "statute": s.statute,
                "consent_id": s.consent_id,
                "sent": dict(s.body) if s.state == StepState.DONE.value else {},
                "state": s.state,
                "result_sha256": s.result_hash,
                "reason": s.last_error,
                "finished_at": _iso(s.finished_at) if s.finished_at else None,
            }
            for s in steps
        ],
    }


def _iso(moment: datetime) -> str:
    """UTC ISO 8601; SQLite hands timestamps back naive (they are stored in UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat()
