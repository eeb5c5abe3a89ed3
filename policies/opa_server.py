"""The OPA-server policy engine: the same Rego, evaluated by a real OPA through ``opa-python-client``.

Concept: ``OpaServerEngine`` implements ``exchange.ports.PolicyDecider`` against OPA's REST API:
``upload_policies`` puts the shipped modules (``PUT /v1/policies/{id}``), ``load_data`` replaces the
policy data document with one request (``PUT /v1/data/registry``, atomic in OPA), and ``decide``
queries ``POST /v1/data/onceonly/exchange/decision``. Chosen by configuration
(``ONCEONLY_POLICY_ENGINE=opa-server``, ``ONCEONLY_OPA_URL``).

Trust assumption: the OPA server is the operator's and reached over a network that may fail.
Every request has a timeout and no retries (a retry would stretch the exchange past its timeout);
when OPA cannot be reached, times out, or answers something that is not a decision, ``decide``
refuses with the reason "policy engine unavailable" (fail closed). Third-party errors are wrapped
at this boundary (style rule 12). Policies are uploaded with ``rego_compat=False``: otherwise the
client rewrites a rejected policy with regexes and uploads the rewrite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient
from opa_client.errors import ConnectionsError, PolicyNotFoundError, RegoParseError, TypeException

from exchange.errors import ConfigurationError
from exchange.ports import JsonValue, PolicyDecision, PolicyInput
from policies.data import DATA_ROOT
from policies.document import REASON_UNAVAILABLE, EvaluationFailed, decide_with
from policies.errors import PolicyCompileError, PolicyEngineUnavailable
from policies.modules import DECISION_PACKAGE, DECISION_RULE, policy_modules

__all__ = ["DEFAULT_OPA_TIMEOUT_S", "POLICY_ID_PREFIX", "OpaServerEngine"]

DEFAULT_OPA_TIMEOUT_S = 0.5
POLICY_ID_PREFIX = "onceonly"

# What opa-python-client and requests raise when OPA is away or answers garbage.
_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    ConnectionsError,
    PolicyNotFoundError,
    TypeException,
    ValueError,  # a body that is not JSON
)


class OpaServerEngine:
    """A real OPA server behind ``PolicyDecider``; fails closed when it cannot be reached."""

    name = "opa-server"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_OPA_TIMEOUT_S,
        token: str | None = None,
        modules: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigurationError(f"OPA url must be http(s)://host[:port]: {url!r}")
        if parts.path not in {"", "/"}:
            raise ConfigurationError(f"OPA url must not have a path: {url!r}")
        if timeout_s <= 0:
            raise ConfigurationError("OPA timeout must be positive")
        port = parts.port or (443 if parts.scheme == "https" else 8181)
        self._client = OpaClient(
            host=parts.hostname,
            port=port,
            ssl=parts.scheme == "https",
            token=token,
            retries=0,
            timeout=timeout_s,
        )
        self._modules = dict(modules) if modules is not None else policy_modules()
        self.url = url
        self.timeout_s = timeout_s

    @property
    def description(self) -> str:
        return f"an OPA server at {self.url} (timeout {self.timeout_s} s)"

    def close(self) -> None:
        self._client.close_connection()

    def upload_policies(self) -> None:
        """Put every policy module to OPA; raises ``PolicyCompileError`` / ``…Unavailable``."""
        for name, source in self._modules.items():
            policy_id = f"{POLICY_ID_PREFIX}/{name.removesuffix('.rego')}"
            try:
                self._client.update_policy_from_string(source, policy_id, rego_compat=False)
            except RegoParseError as exc:
                raise PolicyCompileError(f"OPA rejected policy {name}: {exc}") from exc
            except _CLIENT_ERRORS as exc:
                raise PolicyEngineUnavailable(f"OPA at {self.url}: {type(exc).__name__}") from exc

    def load_data(self, data: Mapping[str, JsonValue]) -> None:
        """Replace ``data.registry`` in OPA with one PUT (atomic there)."""
        try:
            self._client.update_or_create_data(dict(data), DATA_ROOT)
        except RegoParseError as exc:
            raise PolicyCompileError(f"OPA rejected the policy data: {exc}") from exc
        except _CLIENT_ERRORS as exc:
            raise PolicyEngineUnavailable(f"OPA at {self.url}: {type(exc).__name__}") from exc

    def decide(self, request: PolicyInput) -> PolicyDecision:
        return decide_with(request, self.evaluate)

    def evaluate(self, input_doc: dict[str, JsonValue]) -> Mapping[str, JsonValue] | None:
        """The raw decision document from OPA (``None`` when undefined there)."""
        try:
            answer: Any = self._client.query_rule(input_doc, DECISION_PACKAGE, DECISION_RULE)
        except _CLIENT_ERRORS as exc:
            raise EvaluationFailed(REASON_UNAVAILABLE) from exc
        if not isinstance(answer, dict):
            raise EvaluationFailed(REASON_UNAVAILABLE)
        if "result" not in answer:
            return None  # OPA answers {} for an undefined document
        result = answer["result"]
        return result if isinstance(result, dict) else {}
