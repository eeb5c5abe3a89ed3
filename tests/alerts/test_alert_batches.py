"""A batch raises what one evaluation per entry, in index order, raises: the same alerts on the
same entries, whatever the batch size, twins and a consumer's own records of an exchange
included; and entries of a decision the rules say they never ask about are not asked about."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from sqlalchemy import select, text

from alerts.store import AlertRow, VolumeRow
from alerts.worker import AlertWorker, round_lock_key
from exchange.db import make_engine
from exchange.ports import AuditEvent
from tests.alerts.conftest import ALICE, BOB, GAS, NODE, TAX, MakeWorld, World, read

OTHER = "JP/COM/7777777/insurer"


def _mixed_log(n: int) -> list[AuditEvent]:
    """Reads (consented or not, by three clients), refusals, entries naming nobody, another
    node's service, twins and a consumer's own request and answer of one exchange at this node."""
    rng = random.Random(18)
    events: list[AuditEvent] = []
    for i in range(n):
        subject = rng.choice([ALICE, ALICE, ALICE, BOB, None])
        client = rng.choice([TAX, GAS, OTHER])
        kind = rng.random()
        minutes = i * 7  # windows of an hour: a few entries each
        if kind < 0.1:
            event = read(i, subject=subject, kind="refusal", decision="deny", basis=None)
        elif kind < 0.25:
            event = read(i, client=client, subject=subject, consent_id="c-1", basis="consent:c-1")
        elif kind < 0.3:
            event = replace(read(i, client=client), service="JP/GOV/131130/permits/v1")
        else:
            event = read(i, client=client, subject=subject)
        event = replace(event, time=read(0, minutes=minutes).time)
        if kind > 0.9 and subject is not None:  # the consumer's request and answer, same node
            request = replace(event, kind="request", decision="info", subject="tax-code")
            events += [request, event, replace(event, subject="tax-code")]
        else:
            events.append(event)
    return events


def _raised(world: World) -> list[tuple[str, str, str, int]]:
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(AlertRow.rule, AlertRow.subject_key, AlertRow.dedup, AlertRow.entry_index)
        ).all()
    return sorted((r[0], r[1], r[2], int(r[3])) for r in rows)


def _counted(world: World) -> list[tuple[str, int, int]]:
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(VolumeRow.subject_key, VolumeRow.window_us, VolumeRow.entry_index)
        ).all()
    return sorted((r[0], int(r[1]), int(r[2])) for r in rows)


def test_batches_raise_what_one_evaluation_per_entry_raises(make_world: MakeWorld) -> None:
    events = _mixed_log(120)
    results = []
    for size in (1, 13, 500):
        world = make_world(max_reads_per_window=3, window_s=3600)
        world.log.append_many(events)
        worker = AlertWorker(world.log, world.engine, world.rules, node=NODE, batch=size)
        assert worker.run_once() == len(events)
        results.append((_raised(world), _counted(world)))
    assert results[0][0], "the log raises alerts"
    assert results[1] == results[0]
    assert results[2] == results[0]


def test_a_consumers_request_record_does_not_hide_the_providers_read(world: World) -> None:
    # Machida's tax office reads Machida's registry: the consumer's request record comes first
    # (not a read, raises nothing, so it does not claim the exchange), then the provider's read,
    # then the consumer's record of the answer (a twin).
    provider = read(0, client=GAS)
    request = replace(provider, kind="request", decision="info", subject="tax-code-of-alice")
    answer = replace(provider, subject="tax-code-of-alice")
    world.log.append_many([request, provider, answer])
    world.worker().run_once()
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(AlertRow.rule, AlertRow.subject_key, AlertRow.entry_index).order_by(AlertRow.id)
        ).all()
    key = world.key(ALICE)
    assert [tuple(r) for r in rows] == [
        ("read-without-consent", key, 1),
        ("new-recipient", key, 1),
    ]


def test_entries_of_decisions_the_rules_do_not_ask_about_are_not_evaluated(
    make_world: MakeWorld,
) -> None:
    events = _mixed_log(120)
    events += [replace(e, decision="error", kind="refusal") for e in events[:10]]
    # a consumer's records of answers it received: another node's service, decision "allow"
    # (also one whose member code merely starts with this node's, this node itself, and none)
    foreign = [f"{GAS}/usage/v1", f"{NODE}9/permits/v1", NODE, None]
    events += [
        replace(e, service=foreign[i % 4], decision="allow") for i, e in enumerate(events[10:30])
    ]
    results, asked = [], []
    for decisions in (None, "the rules' own"):
        world = make_world(max_reads_per_window=3, window_s=3600)
        assert world.rules.asked_decisions == frozenset({"allow", "deny"})
        assert world.rules.own_service_decisions == frozenset({"allow"})
        if decisions is None:  # ask about every entry
            world.rules.asked_decisions = None
            world.rules.own_service_decisions = frozenset()
        seen: list[object] = []
        evaluate = world.rules.evaluate

        def spy(doc, evaluate=evaluate, seen=seen):  # type: ignore[no-untyped-def]
            entry = doc["entry"]
            service = entry.get("service")
            own = isinstance(service, str) and service.startswith(NODE + "/")
            seen.append((entry["decision"], own))
            return evaluate(doc)

        world.rules.evaluate = spy  # type: ignore[method-assign]
        world.log.append_many(events)
        AlertWorker(world.log, world.engine, world.rules, node=NODE, batch=50).run_once()
        results.append((_raised(world), _counted(world)))
        asked.append(set(seen))
    assert results[0][0], "the log raises alerts"
    assert results[1] == results[0]
    assert {("info", True), ("error", True), ("allow", False)} <= asked[0]
    assert asked[1] == {("allow", True), ("deny", True)}, "no allow naming another's service"


def _lock_is_free(world: World) -> bool:
    """Whether another replica (its own engine, so never a connection of this one's pool, where
    the lock would be re-entrant) could take the round's lock now."""
    replica = make_engine(world.engine.url.render_as_string(hide_password=False))
    try:
        with replica.connect() as conn:
            key = {"k": round_lock_key(world.log.log_id)}
            free = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
            if free:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
            return free
    finally:
        replica.dispose()


def test_a_round_is_run_by_one_replica_at_a_time(world: World) -> None:
    """With ``--workers N`` every process runs the alert job; on PostgreSQL a replica that finds
    another one's round under way skips its own instead of evaluating the same entries (on SQLite
    each runs, and the cursor check keeps one batch's work)."""
    world.log.append_many([read(i, client=GAS if i % 2 else TAX) for i in range(10)])
    worker, other = world.worker(), world.worker()
    if world.engine.dialect.name != "postgresql":
        assert worker.run_round() == 10
        assert other.run_round() == 0
        return
    replica = make_engine(world.engine.url.render_as_string(hide_password=False))
    try:
        with replica.connect() as holder:  # another replica's round, under way
            key = {"k": round_lock_key(world.log.log_id)}
            assert holder.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar()
            assert worker.run_round() is None
            assert worker.cursor() == 0, "a skipped round evaluated nothing"
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), key)
            holder.commit()
    finally:
        replica.dispose()
    assert worker.run_round() == 10
    assert _lock_is_free(world), "the lock was released after the round"
    assert other.run_round() == 0
    assert _raised(world), "the round raised the log's alerts"


def test_a_round_that_fails_releases_its_lock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    if world.engine.dialect.name != "postgresql":
        pytest.skip("the round's lock is PostgreSQL's (SQLite replicas take turns at its writer)")
    world.log.append_many([read(i) for i in range(3)])
    worker = world.worker()

    def failing(now: object = None) -> int:
        assert not _lock_is_free(world), "the round runs under its lock"
        raise RuntimeError("a rule that cannot be evaluated")

    monkeypatch.setattr(worker, "run_once", failing)
    with pytest.raises(RuntimeError):
        worker.run_round()
    assert _lock_is_free(world), "a failed round does not keep the lock"
    monkeypatch.undo()
    assert worker.run_round() == 3, "the next round runs"
