"""Each alert rule fires exactly once for its trigger, never for a consented read, and survives a
restart without loss or repetition (the Done-when of issue 15 item 6)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from alerts.store import AlertRow
from tests.alerts.conftest import ALICE, BOB, GAS, T0, TAX, World, read


def _alerts(world: World, subject: str = ALICE) -> list[tuple[str, str | None, int]]:
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(AlertRow.rule, AlertRow.client, AlertRow.entry_index)
            .where(AlertRow.subject_key == world.key(subject))
            .order_by(AlertRow.id)
        ).all()
    return [(r[0], r[1], int(r[2])) for r in rows]


def test_a_private_read_without_consent_fires_once_and_a_new_recipient_once(world: World) -> None:
    world.log.append_many([read(0, client=GAS), read(1, client=GAS)])
    assert world.worker().run_once() == 2
    assert _alerts(world) == [
        ("read-without-consent", GAS, 0),
        ("new-recipient", GAS, 0),
        ("read-without-consent", GAS, 1),
    ]
    # evaluated again (the cursor rewound by hand, as if the commit of the cursor was lost)
    with world.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alert_cursors SET next_index = 0")
    world.worker().run_once()
    assert len(_alerts(world)) == 3


def test_no_rule_fires_for_consented_reads(world: World) -> None:
    world.log.append_many(
        [read(i, client=GAS, consent_id="c-1", basis="consent:c-1") for i in range(6)]
    )
    assert world.worker().run_once() == 6
    assert _alerts(world) == []


def test_a_public_read_under_a_statute_is_only_a_new_recipient(world: World) -> None:
    world.log.append_many([read(0), read(1)])
    world.worker().run_once()
    assert _alerts(world) == [("new-recipient", TAX, 0)]


def test_unusual_volume_fires_once_per_window(world: World) -> None:
    # max 3 non-consented reads an hour: the 4th fires, the 5th and 6th do not; a new hour starts
    # afresh; consented reads do not count.
    events = [read(i, minutes=i) for i in range(6)]
    events += [
        read(10 + i, consent_id="c-1", basis="consent:c-1", minutes=10 + i) for i in range(5)
    ]
    events += [read(100 + i, minutes=61 + i) for i in range(4)]
    world.log.append_many(events)
    world.worker().run_once()
    volume = [a for a in _alerts(world) if a[0] == "unusual-volume"]
    assert volume == [("unusual-volume", TAX, 3), ("unusual-volume", TAX, 14)]


def test_a_refusal_on_the_citizens_data_fires_once(world: World) -> None:
    world.log.append_many(
        [
            read(0, kind="refusal", decision="deny", basis=None),
            # the same exchange recorded twice at this node (one request hash): one alert
            read(0, kind="refusal", decision="deny", basis=None),
            # a refusal naming nobody (before verification) alerts nobody
            read(1, kind="refusal", decision="deny", subject=None),
        ]
    )
    world.worker().run_once()
    assert _alerts(world) == [("refused", TAX, 0)]


def test_a_consumers_own_record_of_an_answer_is_not_a_read_here(world: World) -> None:
    event = read(0, client=GAS)
    foreign = replace(event, service="JP/GOV/131130/permits/v1")
    world.log.append_many([foreign])
    world.worker().run_once()
    assert _alerts(world) == []


def test_alerts_are_per_citizen(world: World) -> None:
    world.log.append_many([read(0, client=GAS), read(1, client=GAS, subject=BOB)])
    world.worker().run_once()
    assert [a[2] for a in _alerts(world, ALICE)] == [0, 0]
    assert [a[2] for a in _alerts(world, BOB)] == [1, 1]


def test_a_restart_between_batches_neither_loses_nor_repeats(world: World) -> None:
    world.log.append_many([read(i, client=GAS) for i in range(10)])  # batch size 7
    first = world.worker()
    first._run_batch(first_now := datetime.now(UTC))
    assert first.cursor() == 7
    # restart: a new worker from the database alone
    world.log.append_many([read(10, client=GAS)])
    assert world.worker().run_once(first_now) == 4
    assert world.worker().run_once() == 0
    with world.engine.connect() as conn:
        counts = conn.execute(
            select(AlertRow.rule, func.count()).group_by(AlertRow.rule).order_by(AlertRow.rule)
        ).all()
    assert [tuple(c) for c in counts] == [
        ("new-recipient", 1),
        ("read-without-consent", 11),
        ("unusual-volume", 1),
    ]


def test_a_disabled_rule_stores_nothing_and_history_still_counts(world: World) -> None:
    inbox = world.inbox()
    inbox.save_settings({world.key(ALICE)}, {"new-recipient": False}, None)
    world.log.append_many([read(0)])
    world.worker().run_once()
    assert _alerts(world) == []
    # turned back on: TAX is not new any more (history was kept while it was off)
    inbox.save_settings({world.key(ALICE)}, {"new-recipient": True}, None)
    world.log.append_many([read(1)])
    world.worker().run_once()
    assert _alerts(world) == []


def test_restricted_entries_raise_nothing_before_release(world: World) -> None:
    event = read(0, client=GAS)
    hidden = replace(event, restricted_until=T0 + timedelta(days=30))
    world.log.append_many([hidden])
    world.worker().run_once()
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AlertRow)).scalar_one() == 0


def test_the_consumers_twin_record_of_one_exchange_at_one_node_raises_nothing(
    world: World,
) -> None:
    # Machida's tax office reads Machida's registry: the provider records the exchange under the
    # registry's code of the citizen, the consumer under the tax office's code (same request).
    provider = read(0, client=GAS)
    consumer = replace(provider, subject="tax-code-of-alice")
    world.log.append_many([provider, consumer])
    world.worker().run_once()
    assert _alerts(world) == [("read-without-consent", GAS, 0), ("new-recipient", GAS, 0)]
    assert _alerts(world, "tax-code-of-alice") == []


def test_two_workers_racing_on_one_batch_store_it_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.log.append_many([read(i, client=GAS) for i in range(3)])
    first, second = world.worker(), world.worker()
    now = datetime.now(UTC)
    load = second._load

    def racing_load(conn: Any, entries: Any) -> Any:
        state = load(conn, entries)
        assert first._run_batch(now) == 3  # another process stores the batch meanwhile
        return state

    monkeypatch.setattr(second, "_load", racing_load)
    assert second._run_batch(now) == 0  # the cursor moved: its evaluation is dropped
    assert second.cursor() == 3
    assert len(_alerts(world)) == 4
