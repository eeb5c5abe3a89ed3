"""The policy engine interface and its choice by configuration, made once at start-up and reported.

Concept: a ``PolicyEngine`` is the kernel's ``PolicyDecider`` plus ``load_data``, through which the
central registry pushes the policy data document (policies.data). Three implementations, by the
name each reports (``engine.name``):

- ``opa-inprocess`` — OPA's own Go evaluator in this process (``OpaInProcessEngine``), when
  ``opa-golib-python-bindings`` loads here;
- ``regopy`` — rego-cpp in this process (``EmbeddedRegoEngine``), always installed;
- ``opa-server`` — a real OPA server over HTTP (``OpaServerEngine``, with ``ONCEONLY_OPA_URL``).

``ONCEONLY_POLICY_ENGINE`` chooses: ``auto`` (the default; ``embedded`` is the older name of it)
takes ``opa-inprocess`` where it loads and ``regopy`` otherwise; ``opa-inprocess`` and ``regopy``
force one (``opa-inprocess`` where it cannot load is a configuration error, never a silent
fallback); ``opa-server`` (or ``opa``) asks the OPA server. ``engine_from_settings`` logs the
choice and why; the node shows it on ``/healthz`` and ``/metrics`` (``PolicyEngineInfo``).
Trust assumption: settings are the operator's (exchange.settings).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

from prometheus_client.metrics_core import InfoMetricFamily, Metric

from exchange.errors import ConfigurationError
from exchange.ports import JsonValue, PolicyDecision, PolicyInput
from exchange.settings import Settings
from policies._internal.opa import unavailable_reason
from policies.embedded import EmbeddedRegoEngine
from policies.inprocess import OpaInProcessEngine
from policies.opa_server import OpaServerEngine

__all__ = [
    "ENGINE_NAMES",
    "AnyPolicyEngine",
    "PolicyEngine",
    "PolicyEngineInfo",
    "engine_from_settings",
    "engine_name",
]

_log = logging.getLogger("onceonly.policies")

ENGINE_NAMES = ("opa-inprocess", "regopy", "opa-server")
"""What ``engine_name`` answers, and what ``/healthz`` and ``/metrics`` show."""

AnyPolicyEngine = EmbeddedRegoEngine | OpaInProcessEngine | OpaServerEngine


@runtime_checkable
class PolicyEngine(Protocol):
    """Decides exchanges (``exchange.ports.PolicyDecider``) on data it is given."""

    def decide(self, request: PolicyInput) -> PolicyDecision: ...

    def load_data(self, data: Mapping[str, JsonValue]) -> None: ...


def engine_name(engine: object) -> str:
    """``opa-inprocess``, ``regopy`` or ``opa-server``; ``other`` for an engine not listed here."""
    if isinstance(engine, OpaServerEngine):
        return "opa-server"
    name = getattr(engine, "name", None)
    return name if isinstance(name, str) and name in ENGINE_NAMES else "other"


def engine_from_settings(settings: Settings) -> AnyPolicyEngine:
    """The engine the settings name, the choice logged. No I/O: for OPA, call
    ``upload_policies()`` then ``load_data()`` before the first decision (until then OPA refuses:
    undefined is a denial); the in-process engines refuse everything until ``load_data``."""
    choice = settings.policy_engine
    engine: AnyPolicyEngine
    if choice in ("opa", "opa-server"):
        if not settings.opa_url:
            raise ConfigurationError(f"ONCEONLY_POLICY_ENGINE={choice} needs ONCEONLY_OPA_URL")
        engine = OpaServerEngine(settings.opa_url, timeout_s=settings.opa_timeout_s)
        why = f"an OPA server at {settings.opa_url}"
    elif choice == "regopy":
        engine = EmbeddedRegoEngine()
        why = "forced"
    else:
        missing = unavailable_reason()
        if choice == "opa-inprocess":
            if missing is not None:
                raise ConfigurationError(f"ONCEONLY_POLICY_ENGINE=opa-inprocess: {missing}")
            engine = OpaInProcessEngine()
            why = "forced"
        elif missing is None:
            engine = OpaInProcessEngine()
            why = "OPA's evaluator loads here"
        else:
            engine = EmbeddedRegoEngine()
            why = f"OPA's evaluator cannot be used: {missing}"
    _log.info(
        "policy engine: %s — %s (ONCEONLY_POLICY_ENGINE=%s: %s)",
        engine_name(engine),
        engine.description,
        choice,
        why,
    )
    return engine


class PolicyEngineInfo:
    """A Prometheus collector: ``onceonly_policy_engine_info{engine=…,setting=…} 1``."""

    def __init__(self, engine: object, setting: str) -> None:
        self.engine = engine_name(engine)
        self.setting = setting

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(
            "onceonly_policy_engine",
            "The policy engine deciding this node's exchanges (chosen at start-up), and the "
            "ONCEONLY_POLICY_ENGINE setting it was chosen by",
        )
        info.add_metric([], {"engine": self.engine, "setting": self.setting})
        yield info
