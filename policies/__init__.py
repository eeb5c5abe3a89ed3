"""Access policies as code: Rego policies and the engines that evaluate them (DESIGN "The parts").

The policy (``policies/rego/exchange.rego``, package ``onceonly.exchange``) decides every exchange:
access right, purpose binding, legal basis (statute or consent), data minimisation and
time-of-validity, as one decision document. ``OpaInProcessEngine`` evaluates it in-process with
OPA's own evaluator (where ``opa-golib-python-bindings`` loads), ``EmbeddedRegoEngine`` in-process
with rego-cpp, ``OpaServerEngine`` asks a real OPA server; ``engine_from_settings`` chooses one at
start-up and says which. All implement ``exchange.ports.PolicyDecider`` and take the policy data
built by ``build_policy_data`` from the central registry.
See docs/policies.md.
"""

from policies.data import (
    AccessRight,
    PolicyRegistry,
    ServicePolicy,
    Statute,
    build_policy_data,
    empty_policy_data,
)
from policies.embedded import EmbeddedRegoEngine
from policies.engine import PolicyEngine, PolicyEngineInfo, engine_from_settings, engine_name
from policies.errors import PolicyCompileError, PolicyEngineUnavailable
from policies.inprocess import OpaInProcessEngine
from policies.modules import DECISION_QUERY, policy_modules
from policies.opa_server import OpaServerEngine

__all__ = [
    "DECISION_QUERY",
    "AccessRight",
    "EmbeddedRegoEngine",
    "OpaInProcessEngine",
    "OpaServerEngine",
    "PolicyCompileError",
    "PolicyEngine",
    "PolicyEngineInfo",
    "PolicyEngineUnavailable",
    "PolicyRegistry",
    "ServicePolicy",
    "Statute",
    "build_policy_data",
    "empty_policy_data",
    "engine_from_settings",
    "engine_name",
    "policy_modules",
]
