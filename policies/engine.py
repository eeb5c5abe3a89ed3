"""The policy engine interface and its choice by configuration.

Concept: a ``PolicyEngine`` is the kernel's ``PolicyDecider`` plus ``load_data``, through which the
central registry pushes the policy data document (policies.data). Two implementations: the embedded
rego-cpp engine (default, no server) and a real OPA server (``ONCEONLY_POLICY_ENGINE=opa`` with
``ONCEONLY_OPA_URL``). Trust assumption: settings are the operator's (exchange.settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from exchange.errors import ConfigurationError
from exchange.ports import JsonValue, PolicyDecision, PolicyInput
from exchange.settings import Settings
from policies.embedded import EmbeddedRegoEngine
from policies.opa_server import OpaServerEngine

__all__ = ["PolicyEngine", "engine_from_settings"]


@runtime_checkable
class PolicyEngine(Protocol):
    """Decides exchanges (``exchange.ports.PolicyDecider``) on data it is given."""

    def decide(self, request: PolicyInput) -> PolicyDecision: ...

    def load_data(self, data: Mapping[str, JsonValue]) -> None: ...


def engine_from_settings(settings: Settings) -> EmbeddedRegoEngine | OpaServerEngine:
    """The engine the settings name. No I/O: for OPA, call ``upload_policies()`` then
    ``load_data()`` before the first decision (until then OPA refuses: undefined is a denial)."""
    if settings.policy_engine == "embedded":
        return EmbeddedRegoEngine()
    if not settings.opa_url:
        raise ConfigurationError("ONCEONLY_POLICY_ENGINE=opa needs ONCEONLY_OPA_URL")
    return OpaServerEngine(settings.opa_url, timeout_s=settings.opa_timeout_s)
