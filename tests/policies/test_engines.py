"""The engines behind PolicyDecider: data built from the registry, swap without restart, fail closed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import policies
from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.ports import ConsentDecision, PolicyInput
from policies import (
    AccessRight,
    EmbeddedRegoEngine,
    PolicyRegistry,
    ServicePolicy,
    Statute,
    build_policy_data,
)

NOW = datetime(2026, 11, 23, 11, 40, tzinfo=UTC)
ADDRESS = ServiceId.parse("JP/GOV/132098/resident-registry/address/v1")
TAX = ClientId.parse("JP/GOV/132098/tax")
POWER = ClientId.parse("JP/COM/1234567890123/billing")


def registry(*, with_right: bool = True) -> PolicyRegistry:
    return PolicyRegistry(
        services=(
            ServicePolicy(
                ADDRESS, ("address", "birth_date", "name"), ("tax-assessment", "utility-move")
            ),
        ),
        access_rights=(
            (
                AccessRight(ADDRESS, TAX, not_before=datetime(2020, 4, 1, tzinfo=UTC)),
                AccessRight(ADDRESS, POWER),
            )
            if with_right
            else ()
        ),
        statutes=(
            Statute(
                ordinance="jp-act-1967-81/art30-9",
                title="住民基本台帳法 第30条の9",
                service=ADDRESS,
                purposes=("tax-assessment",),
                fields=("address", "name"),
                client_classes=("GOV",),
            ),
        ),
    )


def ask(client: ClientId = TAX, **kw: object) -> PolicyInput:
    args: dict[str, object] = {
        "client": client,
        "service": ADDRESS,
        "purpose": "tax-assessment",
        "subject": "p-1",
        "now": NOW,
    }
    args.update(kw)
    return PolicyInput(**args)  # type: ignore[arg-type]


def test_package_exports_its_public_names() -> None:
    assert sorted(policies.__all__) == sorted(n for n in policies.__all__ if hasattr(policies, n))
    assert "EmbeddedRegoEngine" in policies.__all__


def test_statutory_read_is_allowed_with_statute_fields_and_a_decision_id() -> None:
    engine = EmbeddedRegoEngine(build_policy_data(registry()))
    decision = engine.decide(ask())
    assert decision
    assert decision.basis == "statute:jp-act-1967-81/art30-9"
    assert decision.fields == frozenset({"address", "name"})
    assert len(decision.decision_id) == 36
    assert engine.decide(ask()).decision_id != decision.decision_id


def test_consent_from_the_gate_is_a_basis_for_a_private_client() -> None:
    engine = EmbeddedRegoEngine(build_policy_data(registry()))
    consent = ConsentDecision(allow=True, consent_id="c-1", fields=frozenset({"address", "iban"}))
    decision = engine.decide(ask(POWER, purpose="utility-move", consent=consent))
    assert decision.basis == "consent:c-1"
    assert decision.fields == frozenset({"address"})


def test_registry_change_takes_effect_without_restart() -> None:
    engine = EmbeddedRegoEngine(build_policy_data(registry()))
    assert engine.decide(ask())
    engine.load_data(build_policy_data(registry(with_right=False)))
    refused = engine.decide(ask())
    assert not refused
    assert refused.reasons[0].startswith("no access right")


def test_engine_without_data_refuses_everything() -> None:
    decision = EmbeddedRegoEngine().decide(ask())
    assert not decision
    assert decision.reasons == ("unknown service: JP/GOV/132098/resident-registry/address",)


def test_naive_time_is_refused_not_raised() -> None:
    decision = EmbeddedRegoEngine(build_policy_data(registry())).decide(
        ask(now=datetime(2026, 11, 23))
    )
    assert not decision
    assert "timezone-aware" in decision.reasons[0]


def test_policy_that_does_not_compile_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        EmbeddedRegoEngine(modules={"bad.rego": "package onceonly.exchange\ndecision if {"})


def test_statute_naming_no_client_is_refused_as_configuration() -> None:
    bad = PolicyRegistry(
        services=(ServicePolicy(ADDRESS, ("address",), ("p",)),),
        statutes=(Statute("x", "x", ADDRESS, ("p",), ("address",)),),
    )
    with pytest.raises(ConfigurationError, match="names no client"):
        build_policy_data(bad)


def test_access_right_for_unlisted_service_is_refused_as_configuration() -> None:
    bad = PolicyRegistry(services=(), access_rights=(AccessRight(ADDRESS, TAX),))
    with pytest.raises(ConfigurationError, match="does not list"):
        build_policy_data(bad)


def test_naive_window_is_refused_as_configuration() -> None:
    bad = PolicyRegistry(
        services=(ServicePolicy(ADDRESS, ("address",), ("p",)),),
        access_rights=(AccessRight(ADDRESS, TAX, not_before=datetime(2020, 1, 1)),),
    )
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        build_policy_data(bad)


def test_data_is_grouped_by_provider_member_and_keyed_by_unversioned_service() -> None:
    data = build_policy_data(registry())
    member = str(MemberId.parse("JP/GOV/132098"))
    assert list(data["services"][member]) == ["JP/GOV/132098/resident-registry/address"]
    assert data["access_rights"][member]["JP/GOV/132098/resident-registry/address"][str(TAX)] == {
        "not_before": "2020-04-01T00:00:00+00:00"
    }
