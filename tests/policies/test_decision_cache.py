"""The embedded engine's cache of allow decisions is exact across validity-window boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exchange.identifiers import ClientId, ServiceId
from exchange.ports import PolicyInput
from policies import (
    AccessRight,
    EmbeddedRegoEngine,
    PolicyRegistry,
    ServicePolicy,
    Statute,
    build_policy_data,
)

ADDRESS = ServiceId.parse("JP/GOV/132098/resident-registry/address/v1")
TAX = ClientId.parse("JP/GOV/132098/tax")
END = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _engine() -> EmbeddedRegoEngine:
    return EmbeddedRegoEngine(
        build_policy_data(
            PolicyRegistry(
                services=(ServicePolicy(ADDRESS, ("address",), ("taxation",)),),
                access_rights=(AccessRight(ADDRESS, TAX, not_after=END),),
                statutes=(
                    Statute(
                        ordinance="jp-local-tax-act/art294",
                        title="地方税法 第294条",
                        service=ADDRESS,
                        purposes=("taxation",),
                        fields=("address",),
                        clients=(TAX,),
                    ),
                ),
            )
        )
    )


def _ask(now: datetime, subject: str = "S1") -> PolicyInput:
    return PolicyInput(client=TAX, service=ADDRESS, purpose="taxation", subject=subject, now=now)


def test_cached_allow_is_reused_with_a_fresh_decision_id() -> None:
    engine = _engine()
    first = engine.decide(_ask(END - timedelta(hours=1)))
    second = engine.decide(_ask(END - timedelta(minutes=30), subject="S2"))
    assert first
    assert second
    assert first.basis == second.basis == "statute:jp-local-tax-act/art294"
    assert first.decision_id != second.decision_id


def test_a_cached_allow_never_outlives_the_window_that_allowed_it() -> None:
    engine = _engine()
    assert engine.decide(_ask(END - timedelta(seconds=1)))
    assert not engine.decide(_ask(END))  # not_after is exclusive: refused at the boundary
    assert not engine.decide(_ask(END + timedelta(days=1)))


def test_new_data_drops_the_cache() -> None:
    engine = _engine()
    assert engine.decide(_ask(END - timedelta(hours=1)))
    engine.load_data(
        build_policy_data(
            PolicyRegistry(services=(ServicePolicy(ADDRESS, ("address",), ("taxation",)),))
        )
    )
    assert not engine.decide(_ask(END - timedelta(hours=1)))


def test_a_repeated_allow_is_served_without_evaluating_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = _engine()
    calls: list[object] = []
    compiled = engine._compiled
    real = compiled.evaluate

    def counting(doc: object) -> tuple[bool, object]:
        calls.append(doc)
        return real(doc)  # type: ignore[arg-type]

    monkeypatch.setattr(compiled, "evaluate", counting)
    for minutes in (50, 40, 30):
        assert engine.decide(_ask(END - timedelta(minutes=minutes), subject=f"S{minutes}"))
    assert len(calls) == 1
    assert not engine.decide(_ask(END))  # past the boundary: evaluated again, and refused
    assert len(calls) == 2
