"""The alert rules (``policies/rego/alerts.rego``, package ``onceonly.alerts``), evaluated in-process.

Concept: which alerts one audit entry raises for its citizen is policy, written in Rego beside
the exchange policy so that it can be read and reviewed the same way (docs/alerts.md). The node's
alert worker (``alerts.worker``) asks ``data.onceonly.alerts.evaluation`` once per new log entry,
with the entry's record and its history of that citizen; the answer says whether the entry is a
read, whether it was consented, and which alerts it raises, each with the key that makes it
happen once.

Trust assumption: the modules and the data are the operator's; the entry was written by this
node. Fail safe: an evaluation failure is an ``AlertRulesError`` for the worker to retry, never
anything on the exchange path (the worker runs after the entry is committed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from exchange.ports import JsonValue
from policies._internal.opa import OpaFailure, PreparedQuery, unavailable_reason
from policies._internal.rego import CompiledQuery, RegoFailure
from policies.errors import PolicyCompileError
from policies.modules import policy_modules

__all__ = [
    "ALERTS_DOCUMENT",
    "ALERTS_MODULE",
    "ALERTS_QUERY",
    "ALERT_RULES",
    "AlertEvaluation",
    "AlertRules",
    "AlertRulesError",
    "AlertsEngine",
    "RaisedAlert",
    "opa_unavailable",
]

ALERTS_MODULE = "alerts.rego"
ALERTS_QUERY = "x := data.onceonly.alerts.evaluation"
ALERTS_DOCUMENT = "onceonly.alerts.evaluation"
ASKED_DOCUMENT = "onceonly.alerts.asked_about_decisions"
OWN_SERVICES_DOCUMENT = "onceonly.alerts.asked_about_own_services_only"
AlertsEngine = Literal["auto", "opa-inprocess", "regopy"]
ALERT_RULES = ("read-without-consent", "new-recipient", "unusual-volume", "refused")
"""Every rule the module can raise, in the order the citizen's settings list them."""
DEFAULT_WINDOW_S = 86_400
DEFAULT_MAX_READS = 20


def opa_unavailable() -> str | None:
    """Why OPA's evaluator cannot run the alert rules here (None: it can)."""
    return unavailable_reason()


class AlertRulesError(Exception):
    """The alert rules could not be evaluated (or gave a malformed answer)."""


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    rule: str
    dedup: str


@dataclass(frozen=True, slots=True)
class AlertEvaluation:
    """The rules' answer for one entry."""

    read: bool
    consented: bool
    alerts: tuple[RaisedAlert, ...]


class AlertRules:
    """``alerts.rego`` compiled with its data (``data.alerts``); thread-safe.

    ``data`` keys: ``max_reads_per_window`` (reads of one citizen in one window above which the
    volume alert fires), ``window_s`` (the window, seconds) and ``public_member_classes``."""

    def __init__(
        self, data: Mapping[str, Any] | None = None, *, engine: AlertsEngine = "auto"
    ) -> None:
        """``engine``: OPA's own evaluator in-process (``auto`` takes it where its bindings
        load: about 25× faster per entry than regopy here), or regopy. Both evaluate the same
        module; tests/alerts runs every rule test on each."""
        merged: dict[str, Any] = {
            "max_reads_per_window": DEFAULT_MAX_READS,
            "window_s": DEFAULT_WINDOW_S,
            "public_member_classes": ["GOV"],
        }
        merged.update(data or {})
        window = merged["window_s"]
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise PolicyCompileError("alerts: window_s must be a positive number of seconds")
        limit = merged["max_reads_per_window"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise PolicyCompileError("alerts: max_reads_per_window must be a count")
        self.window_s: int = window
        self.data: dict[str, Any] = merged
        module = policy_modules().get(ALERTS_MODULE)
        if module is None:
            raise PolicyCompileError(f"the policy module {ALERTS_MODULE} is missing")
        opa = engine == "opa-inprocess" or (engine == "auto" and unavailable_reason() is None)
        self.engine: str = "opa-inprocess" if opa else "regopy"
        try:
            self._query: CompiledQuery | PreparedQuery = (
                PreparedQuery({ALERTS_MODULE: module}, {"alerts": merged}, ALERTS_DOCUMENT)
                if opa
                else CompiledQuery(
                    {ALERTS_MODULE: module}, {"alerts": merged}, ALERTS_QUERY, copies=1
                )
            )
        except (RegoFailure, OpaFailure) as exc:
            raise PolicyCompileError(f"the alert rules do not compile: {exc}") from exc
        # The decisions of the entries the module says are worth asking about (its
        # ``asked_about_decisions``, read once); None when it does not say: every entry is asked.
        self.asked_decisions: frozenset[str] | None = self._declared(module, opa, ASKED_DOCUMENT)
        # Of those, the decisions whose entries are worth asking about only when they name a
        # service this node provides (``asked_about_own_services_only``); empty when not said.
        self.own_service_decisions: frozenset[str] = (
            self._declared(module, opa, OWN_SERVICES_DOCUMENT) or frozenset()
        )

    def _declared(self, module: str, opa: bool, document: str) -> frozenset[str] | None:
        """A set of strings the module declares at ``document`` (read once); None if it does
        not."""
        try:
            if opa:
                query = PreparedQuery({ALERTS_MODULE: module}, {"alerts": self.data}, document)
                try:
                    defined, value = query.evaluate({})
                finally:
                    query.close()
            else:
                defined, value = CompiledQuery(
                    {ALERTS_MODULE: module}, {"alerts": self.data}, f"x := data.{document}"
                ).evaluate({})
        except (RegoFailure, OpaFailure) as exc:
            raise PolicyCompileError(f"the alert rules do not compile: {exc}") from exc
        if not defined:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            name = document.rsplit(".", 1)[1]
            raise PolicyCompileError(f"alerts: {name} must be a set of strings")
        return frozenset(str(v) for v in value)

    def evaluate(self, input_doc: Mapping[str, JsonValue]) -> AlertEvaluation:
        try:
            defined, value = self._query.evaluate(dict(input_doc))
        except (RegoFailure, OpaFailure) as exc:
            raise AlertRulesError(f"the alert rules failed: {exc}") from exc
        if not defined or not isinstance(value, dict):
            raise AlertRulesError("the alert rules gave no evaluation document")
        raised = value.get("alerts")
        if not isinstance(raised, list):
            raise AlertRulesError("the alert rules gave no list of alerts")
        found: list[RaisedAlert] = []
        for item in raised:
            if not isinstance(item, dict):
                raise AlertRulesError("an alert is not an object")
            rule, dedup = item.get("rule"), item.get("dedup")
            if rule not in ALERT_RULES or not isinstance(dedup, str) or not dedup:
                raise AlertRulesError(f"a malformed alert: {item!r}")
            found.append(RaisedAlert(str(rule), dedup))
        found.sort(key=lambda a: (ALERT_RULES.index(a.rule), a.dedup))
        return AlertEvaluation(
            read=value.get("read") is True,
            consented=value.get("consented") is True,
            alerts=tuple(found),
        )
