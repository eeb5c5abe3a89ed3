"""Planning checks, outcome classification, backoff, the certificate and the runner's state machine
(claims, order groups, leases, retries, final status) on a real database, without a network."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

import procedures
from exchange.db import make_engine, upgrade
from exchange.errors import ClientError, VerificationError
from exchange.message_log import SqlMessageLog
from exchange.signing import MemberSigner, MemberVerifier, generate_private_key
from procedures.address_change import RECIPIENTS, validate_address, validate_move_date
from procedures.certificate import sign_certificate, verify_certificate
from procedures.model import ProcedureStatus, StepState
from procedures.one_stop import ExchangeOutcome, OneStopClient, classify
from procedures.runner import ProcedureRunner, backoff_s
from procedures.store import ProcedureRow, StepRow

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_public_names_are_exported_and_sorted() -> None:
    assert procedures.__all__ == sorted(procedures.__all__, key=lambda n: (not n.isupper(), n))
    for name in procedures.__all__:
        assert getattr(procedures, name) is not None


@pytest.mark.parametrize(
    ("days", "ok"), [(0, True), (-365, True), (-366, False), (92, True), (93, False)]
)
def test_move_date_window_is_one_year_back_and_three_months_ahead(days: int, ok: bool) -> None:
    moved = NOW.date() + timedelta(days=days)
    if ok:
        validate_move_date(moved, now=NOW)
    else:
        with pytest.raises(ClientError) as err:
            validate_move_date(moved, now=NOW)
        assert err.value.code == "Client.InvalidMoveDate"


def test_address_must_be_a_place_in_machida() -> None:
    assert validate_address(" 東京都町田市原町田１丁目１番 ") == "東京都町田市原町田1丁目1番"
    for bad in (
        "大阪府大阪市北区梅田1-1",
        "東京都町田市",
        "東京都町田市 ",
        "東京都町田市森野\x001",
    ):
        with pytest.raises(ClientError) as err:
            validate_address(bad)
        assert err.value.code == "Client.InvalidAddress"


def test_the_resident_registry_comes_first_and_only_companies_need_consent() -> None:
    assert RECIPIENTS[0].key == "resident-registry"
    assert RECIPIENTS[0].order_group == 0
    assert all(r.order_group == 1 for r in RECIPIENTS[1:])
    assert {r.key for r in RECIPIENTS if r.private} == {"electricity", "gas"}


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (200, None, "ok"),
        (404, "Client.NotFound", "not-enrolled"),
        (404, "Server.ServerProxy.UnknownService", "refused"),
        (403, "Server.ServerProxy.AccessDenied", "refused"),
        (409, "Client.IdempotencyKeyReused", "refused"),
        (400, "Client.BadRequest", "refused"),
        (502, "Server.ServerProxy.NetworkError", "transient"),
        (503, None, "transient"),
        (504, None, "transient"),
        (0, None, "transient"),
    ],
)
def test_outcomes_are_classified_by_who_can_fix_them(
    status: int, code: str | None, kind: str
) -> None:
    assert classify(status, code) == kind


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(n, base_s=1, cap_s=10) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]


def test_certificate_verifies_and_any_change_or_other_key_is_refused() -> None:
    signer = MemberSigner(generate_private_key())
    cert = sign_certificate({"procedure": "p1", "steps": [{"state": "done"}]}, signer)
    verifier = MemberVerifier(signer.public_key)
    verify_certificate(cert, verifier)
    altered = {**cert, "payload": {**cert["payload"], "steps": []}}
    other_domain = {**cert, "payload": {**cert["payload"], "domain": "onceonly-node-request"}}
    for bad in (altered, other_domain, {"payload": "x", "signature": 1}):
        with pytest.raises(VerificationError):
            verify_certificate(bad, verifier)
    with pytest.raises(VerificationError):
        verify_certificate(cert, MemberVerifier(MemberSigner(generate_private_key()).public_key))


# --- the runner's state machine ----------------------------------------------------------------


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _procedure(
    engine: Engine, recipients: tuple[str, ...] = ("resident-registry", "water", "gas")
) -> str:
    pid = str(uuid.uuid4())
    with Session(engine) as s, s.begin():
        s.add(
            ProcedureRow(
                id=pid,
                subject="CITIZEN1",
                kind="address-change",
                status=ProcedureStatus.RUNNING.value,
                input={},
                plan={
                    "move_date": "2026-11-30",
                    "new_address": "東京都町田市中町1番",
                    "address_source": "typed",
                    "current_address": "東京都町田市森野1番",
                    "recipients": [],
                },
                submission_key=f"k-{pid}",
                created_at=NOW,
                updated_at=NOW,
            )
        )
        s.flush()
        for seq, key in enumerate(recipients):
            s.add(
                StepRow(
                    id=str(uuid.uuid4()),
                    procedure_id=pid,
                    seq=seq,
                    order_group=0 if key == "resident-registry" else 1,
                    recipient=key,
                    service=f"JP/GOV/132098/{key}/x/v1",
                    basis="statute",
                    fields=["address"],
                    body={"address": "東京都町田市中町1番"},
                    if_enrolled=key == "gas",
                    state=StepState.PENDING.value,
                    attempts=0,
                    next_attempt_at=NOW,
                    idempotency_key=f"oo-procedure-{pid}-{seq}",
                )
            )
    return pid


def _runner(engine: Engine, name: str, **kw: Any) -> ProcedureRunner:
    # Never sends anything here: claim/complete/finish are database work only.
    client = OneStopClient("http://127.0.0.1:9", "unused")
    return ProcedureRunner(
        engine, client, MemberSigner(generate_private_key()), runner_id=name, **kw
    )


def _outcome(kind: Any, status: int = 200, data: Any = None) -> ExchangeOutcome:
    return ExchangeOutcome(kind, status, data or {"ok": True}, None, "detail", "m-1", 0.01)


def _states(engine: Engine, pid: str) -> dict[str, str]:
    with Session(engine) as s:
        return {r.recipient: r.state for r in s.query(StepRow).filter_by(procedure_id=pid)}


def test_steps_wait_for_the_resident_record_then_run_in_parallel(engine: Engine) -> None:
    pid = _procedure(engine)
    runner = _runner(engine, "a")
    first = runner.claim(NOW)
    assert [c.recipient for c in first] == ["resident-registry"]
    assert runner.claim(NOW) == []  # the rest waits for the resident record
    assert runner.complete(first[0], _outcome("ok"), NOW) == "done"
    rest = runner.claim(NOW)
    assert sorted(c.recipient for c in rest) == ["gas", "water"]
    assert runner.complete(rest[0], _outcome("ok"), NOW) == "done"
    assert runner.finish(pid, NOW) is None  # not every step is final yet
    assert runner.complete(rest[1], _outcome("not-enrolled", 404), NOW) == "skipped"


def test_transient_failure_is_retried_after_backoff_then_given_up(engine: Engine) -> None:
    _procedure(engine, ("resident-registry",))
    runner = _runner(engine, "a", base_backoff_s=10, max_attempts=2)
    step = runner.claim(NOW)[0]
    assert runner.complete(step, _outcome("transient", 502), NOW) == "pending"
    assert runner.claim(NOW + timedelta(seconds=9)) == []
    again = runner.claim(NOW + timedelta(seconds=10))
    assert again[0].attempt == 2
    assert runner.complete(again[0], _outcome("transient", 503), NOW) == "failed"


def test_refused_resident_record_fails_the_procedure_and_skips_the_notifications(
    engine: Engine,
) -> None:
    pid = _procedure(engine)
    runner = _runner(engine, "a")
    step = runner.claim(NOW)[0]
    assert runner.complete(step, _outcome("refused", 403), NOW) == "failed"
    assert _states(engine, pid) == {
        "resident-registry": "failed",
        "water": "skipped",
        "gas": "skipped",
    }
    assert runner.finish(pid, NOW) == "failed"
    assert runner.finish(pid, NOW) is None  # written once


def test_not_enrolled_skips_where_enrolment_was_unknown_and_fails_elsewhere(
    engine: Engine,
) -> None:
    pid = _procedure(engine)
    runner = _runner(engine, "a")
    runner.complete(runner.claim(NOW)[0], _outcome("ok"), NOW)
    for step in runner.claim(NOW):
        runner.complete(step, _outcome("not-enrolled", 404), NOW)
    assert _states(engine, pid) == {
        "resident-registry": "done",
        "water": "failed",
        "gas": "skipped",
    }
    assert runner.finish(pid, NOW) == "partial"
    with Session(engine) as s:
        row = s.get(ProcedureRow, pid)
        assert row is not None
        assert row.result is not None
        assert row.result["payload"]["status"] == "partial"


def test_expired_lease_passes_the_step_to_another_runner_and_the_old_one_cannot_finish_it(
    engine: Engine,
) -> None:
    _procedure(engine, ("resident-registry",))
    crashed = _runner(engine, "crashed", lease_s=30)
    other = _runner(engine, "other", lease_s=30)
    held = crashed.claim(NOW)[0]
    assert other.claim(NOW + timedelta(seconds=29)) == []
    taken = other.claim(NOW + timedelta(seconds=31))
    assert taken[0].id == held.id
    assert crashed.complete(held, _outcome("ok"), NOW) is None
    assert other.complete(taken[0], _outcome("ok"), NOW) == "done"


def test_a_finished_procedure_is_done_and_its_summary_lists_every_step(engine: Engine) -> None:
    pid = _procedure(engine)
    runner = _runner(engine, "a")
    runner.complete(runner.claim(NOW)[0], _outcome("ok"), NOW)
    for step in runner.claim(NOW):
        runner.complete(step, _outcome("ok"), NOW)
    assert runner.finish(pid, NOW) == "done"
    with Session(engine) as s:
        row = s.get(ProcedureRow, pid)
        assert row is not None
        assert row.result is not None
        steps = row.result["payload"]["steps"]
    assert [x["recipient"] for x in steps] == ["resident-registry", "water", "gas"]
    assert all(x["result_sha256"] and x["sent"] for x in steps)
    assert date.fromisoformat(row.result["payload"]["move_date"]) == date(2026, 11, 30)


def test_every_completed_step_is_an_audit_event_of_the_citizen(engine: Engine) -> None:
    _procedure(engine, ("resident-registry",))
    runner = _runner(engine, "a", audit=SqlMessageLog(engine))
    runner.complete(runner.claim(NOW)[0], _outcome("ok"), NOW)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT kind, decision, subject, client FROM xchg_message_log")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("procedure.step", "allow", "CITIZEN1", "JP/GOV/132098/one-stop")
    ]
