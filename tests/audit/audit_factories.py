"""Event factory shared by the audit tests (not a test module)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from exchange.ports import AuditEvent, AuditKind

ORIGIN = "onceonly.example/JP/GOV/132098/audit"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def make_event(
    i: int,
    *,
    subject: str | None = "ps-alice",
    kind: AuditKind = "request",
    decision: str = "allow",
    client: str = "JP/GOV/132098/tax",
    service: str = "JP/GOV/132098/resident-registry/address",
    purpose: str = "tax-assessment",
    consent_id: str | None = None,
    basis: str | None = "地方税法第294条",
) -> AuditEvent:
    assert decision in ("allow", "deny", "error", "info")
    return AuditEvent(
        time=T0 + timedelta(minutes=i),
        node="JP/GOV/132098/resident-registry",
        kind=kind,
        decision=decision,  # type: ignore[arg-type]
        client=client,
        service=service,
        purpose=purpose,
        subject=subject,
        consent_id=consent_id,
        message_id=f"msg-{i:06d}",
        body_hash="n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
        basis=basis,
    )
