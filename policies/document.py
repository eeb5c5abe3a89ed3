"""The input document an engine evaluates, and the decision document it answers.

Concept: both engines (embedded rego-cpp and an OPA server) see the *same* JSON input, built here
from the kernel's ``PolicyInput``, and their answer goes through the same parser into a
``PolicyDecision`` — so the only thing that can differ between them is the Rego evaluator.
Trust assumption: the input is built from verified data (exchange.ports); the decision document is
the engine's output and is checked for shape — anything malformed is a refusal (fail closed).
Spec: docs/policies.md, "The input document" and "The decision document".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

from exchange.ports import JsonValue, PolicyDecision, PolicyInput
from policies.data import format_time

__all__ = [
    "REASON_EVALUATION_FAILED",
    "REASON_MALFORMED",
    "REASON_UNAVAILABLE",
    "REASON_UNDEFINED",
    "Evaluate",
    "EvaluationFailed",
    "decide_with",
    "deny",
    "input_document",
    "new_decision_id",
    "parse_decision",
]

REASON_UNAVAILABLE = "policy engine unavailable"
REASON_UNDEFINED = "policy gave no decision (undefined): denied by default"
REASON_MALFORMED = "policy gave a malformed decision: denied"
REASON_NAIVE_TIME = "invalid input: the decision time must be timezone-aware"
REASON_EVALUATION_FAILED = "policy evaluation failed: denied"


class EvaluationFailed(Exception):
    """An engine could not evaluate the policy; ``reason`` goes into the refusal."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Evaluate = Callable[[dict[str, JsonValue]], Mapping[str, JsonValue] | None]
"""Evaluates the decision for one input: the document, ``None`` if undefined, or raises
``EvaluationFailed``."""


def new_decision_id() -> str:
    """A fresh decision id (UUID 4); it goes into the audit entry with the reasons."""
    return str(uuid.uuid4())


def deny(reason: str, *, decision_id: str | None = None) -> PolicyDecision:
    """A refusal with one reason, for when no policy could be evaluated (fail closed)."""
    return PolicyDecision(
        allow=False,
        fields=frozenset(),
        basis=None,
        reasons=(reason,),
        decision_id=decision_id or new_decision_id(),
    )


def input_document(request: PolicyInput) -> dict[str, JsonValue] | None:
    """The JSON input for the policy, or ``None`` when the request cannot be decided at all.

    The service is named without its version: access rights, purposes and statutes are held per
    service code (X-Road grants access per service code); the version travels alongside.
    """
    if request.now.tzinfo is None or request.now.utcoffset() is None:
        return None
    consent: JsonValue = None
    if request.consent is not None:
        consent = {
            "allow": bool(request.consent.allow),
            "consent_id": request.consent.consent_id,
            "fields": sorted(request.consent.fields),
        }
    requested: JsonValue = (
        None if request.requested_fields is None else sorted(set(request.requested_fields))
    )
    return {
        "client": str(request.client),
        "service": str(request.service.unversioned),
        "service_version": request.service.version,
        "purpose": request.purpose,
        "subject": request.subject,
        "now": format_time(request.now),
        "operation": request.operation,
        "requested_fields": requested,
        "consent": consent,
        "represented_party": _party(request.represented_party),
    }


def _party(value: str | None) -> JsonValue:
    """``X-Road-Represented-Party`` as ``{"class": …, "code": …}``, or null when absent."""
    if value is None:
        return None
    party_class, _, code = value.partition("/")
    return {"class": party_class, "code": code}


def decide_with(request: PolicyInput, evaluate: Evaluate) -> PolicyDecision:
    """Build the input, evaluate it with ``evaluate`` and parse the answer; never raises."""
    decision_id = new_decision_id()
    doc = input_document(request)
    if doc is None:
        return deny(REASON_NAIVE_TIME, decision_id=decision_id)
    try:
        result = evaluate(doc)
    except EvaluationFailed as exc:
        return deny(exc.reason, decision_id=decision_id)
    return parse_decision(result, decision_id=decision_id)


def parse_decision(result: Mapping[str, JsonValue] | None, *, decision_id: str) -> PolicyDecision:
    """Check the decision document's shape; anything but a well-formed allow is a refusal."""
    if result is None:
        return deny(REASON_UNDEFINED, decision_id=decision_id)
    allow = result.get("allow")
    fields = result.get("fields")
    basis = result.get("basis")
    reasons = result.get("reasons")
    if (
        not isinstance(allow, bool)
        or not isinstance(fields, list)
        or not all(isinstance(f, str) for f in fields)
        or not (basis is None or isinstance(basis, str))
        or not isinstance(reasons, list)
        or not all(isinstance(r, str) for r in reasons)
    ):
        return deny(REASON_MALFORMED, decision_id=decision_id)
    if allow and (not fields or basis is None):
        # An allow with nothing to give or no basis is a policy bug, not a licence.
        return deny(REASON_MALFORMED, decision_id=decision_id)
    if not allow:
        return PolicyDecision(
            allow=False,
            fields=frozenset(),
            basis=None,
            reasons=tuple(reasons) or (REASON_UNDEFINED,),
            decision_id=decision_id,
        )
    return PolicyDecision(
        allow=True,
        fields=frozenset(fields),
        basis=basis,
        reasons=tuple(reasons),
        decision_id=decision_id,
    )
