"""Errors of the policy engines, subclassing the kernel's hierarchy (style rule 10).

Trust assumption: none. A decision never raises these — an engine that cannot decide answers a
refusal (fail closed); they come from configuring an engine: a policy that does not compile, a
data document that cannot be loaded, an OPA server that cannot be reached to take them.
"""

from __future__ import annotations

from exchange.errors import ConfigurationError, TransportError

__all__ = ["PolicyCompileError", "PolicyEngineUnavailable"]


class PolicyCompileError(ConfigurationError):
    """A policy module or the data document was rejected by the engine."""

    code = "Server.ServerProxy.PolicyInvalid"


class PolicyEngineUnavailable(TransportError):
    """The OPA server could not be reached, timed out or answered something that is not OPA."""

    code = "Server.ServerProxy.PolicyEngineUnavailable"
