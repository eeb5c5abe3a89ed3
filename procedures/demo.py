"""One address change end to end, for ``onceonly demo`` and the benchmark.

``demo_address_change`` starts the procedure for one citizen (from a recent land-registry purchase
when they have one, else with a typed address), approves every consent the preview asks for,
confirms, runs the steps until the procedure is final and returns each step's result.

Trust assumption: this is the demo's composition, not a service: the caller hands in the one-stop
node's URL and API key, the consent service the nodes' gates use, the platform signer and a
database for the procedure store (migrated here).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from exchange.db import make_engine, upgrade
from exchange.errors import TransportError
from exchange.signing import Signer
from procedures.address_change import AddressChangeService, ConsentDesk
from procedures.model import (
    AddressChangeInput,
    ConfirmInput,
    ProcedureView,
    StepResult,
)
from procedures.one_stop import OneStopClient
from procedures.runner import ProcedureRunner
from procedures.store import StepRow

__all__ = ["DEMO_ADDRESS", "DemoRun", "demo_address_change"]

DEMO_ADDRESS = "東京都町田市中町一丁目20番23号"
MAX_DEMO_S = 60.0
_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class DemoRun:
    """The finished procedure, its step results and timings (for the benchmark)."""

    procedure: ProcedureView
    steps: list[StepResult]
    certificate: dict[str, object] | None
    total_s: float
    """From the start request to the last step's completion."""


async def demo_address_change(
    node_url: str,
    api_key_one_stop: str,
    consent_service: ConsentDesk,
    citizen_subject: str,
    *,
    db_url: str,
    signer: Signer,
    address: str = DEMO_ADDRESS,
    decline: frozenset[str] = frozenset(),
    now: datetime | None = None,
    timeout_s: float = MAX_DEMO_S,
) -> DemoRun:
    """Run one address change for ``citizen_subject`` (their platform id) and return its steps."""
    engine = make_engine(db_url)
    try:
        await asyncio.to_thread(upgrade, engine)
        async with OneStopClient(node_url, api_key_one_stop) as client:
            service = AddressChangeService(engine, client, consent_service)
            runner = ProcedureRunner(engine, client, signer, base_backoff_s=0.2, max_backoff_s=2.0)
            started = time.perf_counter()
            at = now or datetime.now(UTC)
            properties = await service.recent_properties(citizen_subject, now=at)
            data = (
                AddressChangeInput(
                    property_number=str(properties[0]["property_number"]), move_date=at.date()
                )
                if properties
                else AddressChangeInput(address=address, move_date=at.date())
            )
            view = await service.start(citizen_subject, data, now=at)
            decisions: dict[str, Literal["approve", "decline"]] = {
                r.recipient: "decline" if r.recipient in decline else "approve"
                for r in view.recipients
                if r.consent_request_id is not None
            }
            service.confirm(
                citizen_subject, view.id, ConfirmInput(consents=decisions), now=datetime.now(UTC)
            )
            deadline = time.monotonic() + timeout_s
            while True:
                await runner.run_once()
                current = service.get(view.id, subject=citizen_subject)
                if current.certificate_available:
                    break
                if time.monotonic() > deadline:
                    raise TransportError("the demo address change did not finish in time")
                await asyncio.sleep(_POLL_S)
            total = time.perf_counter() - started
            exchange_s = await asyncio.to_thread(_exchange_times, engine, view.id)
            steps = [
                StepResult(
                    recipient=s.recipient,
                    service=s.service,
                    basis=s.basis,
                    state=s.state,
                    detail=(
                        f"told by the change event of {s.told_by.split('/', 4)[-1]}"
                        if s.told_by
                        else s.last_error or s.result_hash
                    ),
                    exchange_s=exchange_s.get(s.seq),
                )
                for s in current.steps
            ]
            return DemoRun(
                current,
                steps,
                service.certificate(view.id, subject=citizen_subject),
                total,
            )
    finally:
        engine.dispose()


def _exchange_times(engine: Engine, procedure_id: str) -> dict[int, float]:
    with Session(engine) as session:
        rows = session.execute(
            select(StepRow.seq, StepRow.exchange_s).where(StepRow.procedure_id == procedure_id)
        ).all()
    return {int(seq): float(s) for seq, s in rows if s is not None}
