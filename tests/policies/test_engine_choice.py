"""The policy engine is chosen once at start-up by ``ONCEONLY_POLICY_ENGINE``, and says so.

``auto`` takes OPA's evaluator in-process where ``opa-golib-python-bindings`` loads and rego-cpp
otherwise; ``opa-inprocess`` and ``regopy`` force one; forcing OPA in-process where it cannot load
is a configuration error, never a silent fallback. The bindings are made unimportable for a test
the way Python itself does it (``sys.modules[name] = None`` makes ``import name`` raise).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import PolicyInput
from exchange.settings import Settings
from policies import (
    AccessRight,
    EmbeddedRegoEngine,
    OpaInProcessEngine,
    OpaServerEngine,
    PolicyEngineInfo,
    PolicyRegistry,
    ServicePolicy,
    Statute,
    build_policy_data,
    engine_from_settings,
    engine_name,
)
from policies._internal.opa import unavailable_reason
from policies.errors import PolicyCompileError
from policies.inprocess import InProcessEngine

OPA_MISSING = unavailable_reason()
needs_opa = pytest.mark.skipif(
    OPA_MISSING is not None, reason=f"OPA's evaluator cannot run in-process: {OPA_MISSING}"
)
ADDRESS = ServiceId.parse("JP/GOV/132098/resident-registry/address/v1")
TAX = ClientId.parse("JP/GOV/132098/tax")
NOW = datetime(2026, 11, 23, 11, 40, tzinfo=UTC)


@pytest.fixture
def without_opa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opa_bindings", None)
    assert unavailable_reason() is not None


def _settings(**kw: Any) -> Settings:
    return Settings(**kw)


@needs_opa
def test_auto_takes_opa_in_process_where_it_loads_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="onceonly.policies"):
        engine = engine_from_settings(_settings())
    assert isinstance(engine, OpaInProcessEngine)
    assert engine_name(engine) == "opa-inprocess"
    assert any(
        r.getMessage().startswith("policy engine: opa-inprocess — OPA's Go evaluator in-process")
        and "ONCEONLY_POLICY_ENGINE=auto" in r.getMessage()
        for r in caplog.records
    )


def test_auto_falls_back_to_regopy_and_says_why(
    without_opa: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="onceonly.policies"):
        engine = engine_from_settings(_settings(policy_engine="embedded"))  # the older name
    assert isinstance(engine, EmbeddedRegoEngine)
    (record,) = [r for r in caplog.records if r.name == "onceonly.policies"]
    assert record.getMessage().startswith("policy engine: regopy — rego-cpp in-process (regopy ")
    assert "OPA's evaluator cannot be used: opa-golib-python-bindings is not installed" in (
        record.getMessage()
    )
    assert "--ignore-requires-python" in record.getMessage()  # how to get it


def test_forcing_opa_in_process_where_it_cannot_load_is_a_configuration_error(
    without_opa: None,
) -> None:
    with pytest.raises(ConfigurationError, match="opa-inprocess: opa-golib-python-bindings"):
        engine_from_settings(_settings(policy_engine="opa-inprocess"))


def test_regopy_can_be_forced() -> None:
    engine = engine_from_settings(_settings(policy_engine="regopy"))
    assert isinstance(engine, EmbeddedRegoEngine)
    assert engine_name(engine) == "regopy"


@needs_opa
def test_opa_in_process_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEONLY_POLICY_ENGINE", "opa-inprocess")
    assert isinstance(engine_from_settings(Settings()), OpaInProcessEngine)


@pytest.mark.parametrize("choice", ["opa-server", "opa"])
def test_the_opa_server_needs_its_url(choice: str) -> None:
    with pytest.raises(ConfigurationError, match="needs ONCEONLY_OPA_URL"):
        engine_from_settings(_settings(policy_engine=choice))
    engine = engine_from_settings(_settings(policy_engine=choice, opa_url="http://127.0.0.1:8181"))
    assert isinstance(engine, OpaServerEngine)
    assert engine_name(engine) == "opa-server"


def test_an_unknown_engine_is_refused_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEONLY_POLICY_ENGINE", "wasm")
    with pytest.raises(ValidationError):
        Settings()


def test_metrics_name_the_engine_and_the_setting() -> None:
    registry = CollectorRegistry()
    registry.register(PolicyEngineInfo(EmbeddedRegoEngine(), "auto"))
    text = generate_latest(registry).decode()
    assert 'onceonly_policy_engine_info{engine="regopy",setting="auto"} 1.0' in text


def _data(*, with_right: bool) -> dict[str, Any]:
    return build_policy_data(
        PolicyRegistry(
            services=(ServicePolicy(ADDRESS, ("address", "name"), ("tax-assessment",)),),
            access_rights=(AccessRight(ADDRESS, TAX),) if with_right else (),
            statutes=(
                Statute(
                    "jp-act-1967-81/art30-9",
                    "住民基本台帳法 第30条の9",
                    ADDRESS,
                    ("tax-assessment",),
                    ("address",),
                    client_classes=("GOV",),
                ),
            ),
        )
    )


def _engines() -> list[Any]:
    return [
        EmbeddedRegoEngine,
        pytest.param(OpaInProcessEngine, marks=needs_opa),
    ]


def _ask() -> PolicyInput:
    return PolicyInput(
        client=TAX, service=ADDRESS, purpose="tax-assessment", subject="p-1", now=NOW
    )


@pytest.mark.parametrize("engine_class", _engines())
def test_a_removed_access_right_is_gone_after_load_data(
    engine_class: type[InProcessEngine],
) -> None:
    """A new data version replaces the old one whole (OPA's ``add_data`` alone would merge)."""
    engine = engine_class(_data(with_right=True))
    assert engine.decide(_ask())
    engine.load_data(_data(with_right=False))
    refused = engine.decide(_ask())
    assert not refused
    assert refused.reasons[0].startswith("no access right")


@pytest.mark.parametrize("engine_class", _engines())
def test_the_same_data_again_is_not_compiled_again(engine_class: type[InProcessEngine]) -> None:
    engine = engine_class(_data(with_right=True))
    compiled = engine._compiled
    engine.load_data(_data(with_right=True))  # an equal document, built afresh
    assert engine._compiled is compiled
    engine.load_data(_data(with_right=False))
    assert engine._compiled is not compiled


@pytest.mark.parametrize("engine_class", _engines())
def test_data_that_does_not_compile_keeps_the_old_data(
    engine_class: type[InProcessEngine],
) -> None:
    engine = engine_class(_data(with_right=True))
    with pytest.raises(PolicyCompileError):
        engine.load_data({"services": {"x": float("nan")}})
    assert engine.decide(_ask())
