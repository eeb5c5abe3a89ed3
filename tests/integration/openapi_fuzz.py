"""schemathesis, driven from the tests: every check against one OpenAPI document, bounded.

``fuzz(url, credentials)`` runs schemathesis' engine — the same phases as ``schemathesis run``
(examples, coverage, fuzzing, stateful) with every check (``--checks all``) — against a served
document, with a fixed seed, deterministic generation and ``MAX_EXAMPLES`` per operation, and
returns what it did: operations, cases sent, failures (each with its curl reproduction).

With ``credentials`` the fuzzer authenticates as the document says each operation needs — a real
API key for the ``X-Road-Client`` the case names, a real token from the development issuer, a
node request signed with a subsystem's real key over the exact bytes sent — so it reaches past
401; without, every protected operation must refuse it. ``ignored_auth`` then removes or
garbles those credentials itself and expects 401/403.

A check is switched off only for an operation it cannot apply to, in ``NOT_APPLICABLE``, each
with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import schemathesis
from schemathesis.engine import Status, events, from_schema

from exchange.identifiers import ClientId
from exchange.node_requests import sign_node_request
from exchange.signing import MemberSigner

__all__ = ["CHECKS", "Credentials", "FuzzReport", "fuzz"]

SEED = 20261123
MAX_EXAMPLES = 5
REQUEST_TIMEOUT_S = 30
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "use_after_free",
    "ensure_resource_availability",
    "missing_required_header",
    "ignored_auth",
    "object_level_authorization",
    "unsupported_method",
    "allow_header_conformance",
)
"""Every built-in check (``--checks all``; ``max_response_time`` needs a limit and is not one)."""

_IN_THE_LOG = (
    "the sizes a proof or an export can name depend on the log's size at the time of the call "
    "(0 <= first <= second <= size): no schema can state it, and beyond it the answer is 400"
)
_ANOTHER_PRINCIPAL = (
    "a consent request is made by a consumer's node (a signed request) and read, approved or "
    "declined by the citizen it names: the fuzzer's citizen finds only the requests naming them, "
    "and one naming anybody else is a 404, like an unknown one (no existence oracle)"
)
NOT_APPLICABLE: Mapping[str, Mapping[str, str]] = {
    "exchangeMessage": {
        "positive_data_acceptance": "a message is authenticated by its envelope's signature, "
        "which no schema can state: a schema-valid but unsigned message is refused 400 "
        "Server.ServerProxy.InvalidSignature (protocol §3, steps 1-7), as it must be",
    },
    "receiveEvent": {
        "positive_data_acceptance": "an event is authenticated by its signature with a key the "
        "verified registry names, which no schema can state: a schema-valid but unsigned event is "
        "refused 400 (protocol §7, steps E1-E6), as it must be",
    },
    "getConsistencyProof": {"positive_data_acceptance": _IN_THE_LOG},
    "exportAuditLog": {"positive_data_acceptance": _IN_THE_LOG},
    # the consent service's log serves the same routes (consent.api.build_consent_log_router)
    "consentLogGetConsistencyProof": {"positive_data_acceptance": _IN_THE_LOG},
    "consentLogExportAuditLog": {"positive_data_acceptance": _IN_THE_LOG},
    "grantMandate": {
        "positive_data_acceptance": "valid_until must be after valid_from, a rule between two "
        "fields that JSON Schema cannot state; a mandate breaking it is a 400",
    },
    "createConsentRequest": {
        "positive_data_acceptance": "valid_until must be after valid_from, a rule between two "
        "fields that JSON Schema cannot state; a request breaking it is a 400",
    },
    **{
        operation_id: {"ensure_resource_availability": _ANOTHER_PRINCIPAL}
        for operation_id in (
            "getConsentRequest",
            "approveConsentRequest",
            "declineConsentRequest",
        )
    },
    "startAddressChange": {
        "positive_data_acceptance": "the new address and the move date are checked against the "
        "address form and the calendar (docs/procedures.md): input the schema allows but they "
        "refuse is a 400",
    },
}
"""Checks that cannot apply to an operation, by operationId, and why."""

SAME_AS_POST = r"^callService(Put|Patch|Delete)"
"""A node's service calls by PUT, PATCH and DELETE: one handler and the very parameters of the
POST beside them, so the coverage phase's boundary cases (≈190 per operation) run for GET and
POST only; these get the examples and fuzzing phases."""


@dataclass(frozen=True)
class Credentials:
    """Real credentials for the fuzzer (made by the test's fixtures, never fixed values)."""

    api_keys: Mapping[str, str]
    """API key by the client it was issued to."""
    token: str
    """A bearer token holding every role the documents name (citizen, auditor)."""
    node_client: ClientId
    node_signer: MemberSigner
    prefix: str
    """The path the document's app is mounted under (signed node requests name the path
    inside the app)."""


_TO_SIGN = "signed-when-sent"


class _SignedNodeRequest(requests.auth.AuthBase):
    """Signs the request as it is finally sent (body bytes, method, path): protocol §5 N1-N3.

    Only a request that still carries the auth provider's placeholder is signed: one whose
    node headers schemathesis removed or garbled (a negative case, an ``ignored_auth`` probe)
    goes out as it is, and must be refused."""

    def __init__(self, credentials: Credentials) -> None:
        self._c = credentials

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if r.headers.get("X-OnceOnly-Node-Signature") != _TO_SIGN:
            return r
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
        path = urlsplit(r.url or "").path
        path = path[len(self._c.prefix) :] if path.startswith(self._c.prefix) else path
        signed = sign_node_request(
            self._c.node_signer,
            self._c.node_client,
            r.method or "GET",
            path,
            body,
            now=datetime.now(UTC),
        )
        r.headers.update(signed)
        return r


def _auth_provider(credentials: Credentials) -> type:
    class OnceOnlyAuth:
        """Applies what the operation's security requirement names (one of its alternatives)."""

        def get(self, case: Any, ctx: Any) -> Credentials:
            return credentials

        def set(self, case: Any, data: Credentials, ctx: Any) -> None:
            schemes = {
                name for req in case.operation.definition.raw.get("security", ()) for name in req
            }
            headers = case.headers if case.headers is not None else {}
            if "apiKey" in schemes:
                client = str(headers.get("X-Road-Client", ""))
                # The key issued to the client the case names: a schema-valid case is genuine.
                headers["X-OnceOnly-Api-Key"] = data.api_keys.get(
                    client, next(iter(data.api_keys.values()))
                )
            if "bearerToken" in schemes:
                headers["Authorization"] = f"Bearer {data.token}"
            if "nodeSignature" in schemes:
                headers["X-OnceOnly-Node-Client"] = str(data.node_client)
                headers["X-OnceOnly-Node-Time"] = _TO_SIGN
                headers["X-OnceOnly-Node-Signature"] = _TO_SIGN
                object.__setattr__(case, "_auth", _SignedNodeRequest(data))
            case.headers = headers

    return OnceOnlyAuth


@dataclass
class FuzzReport:
    url: str
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    seconds: float = 0.0
    checks_run: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.url}: {len(self.operations)} operations, {self.cases} cases, "
            f"{len(self.failures)} failures, {len(self.errors)} errors in {self.seconds:.1f} s"
        )

    def details(self) -> str:
        return "\n\n".join([*self.errors, *self.failures])


def _config(*, coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT_S,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "checks": {name: {"enabled": True} for name in CHECKS},
            "phases": {"coverage": {"enabled": coverage}},
            "operations": [
                *(
                    {
                        "include-operation-id": operation_id,
                        "checks": {name: {"enabled": False} for name in checks},
                    }
                    for operation_id, checks in NOT_APPLICABLE.items()
                ),
                {
                    "include-operation-id-regex": SAME_AS_POST,
                    "phases": {"coverage": {"enabled": False}},
                },
            ],
        }
    )


def _record(report: FuzzReport, event: events.ScenarioFinished) -> None:
    report.operations.add(event.label)
    report.cases += len(event.recorder.cases)
    for checks in event.recorder.checks.values():
        for check in checks:
            report.checks_run.add(check.name)
            info = check.failure_info
            if check.status != Status.FAILURE or info is None:
                continue
            text = f"{event.label} [{check.name}] {info.failure.title}\n{info.failure.message}"
            text += f"\n{info.code_sample}"
            if text not in report.failures:
                report.failures.append(text)


def fuzz(url: str, credentials: Credentials | None, *, coverage: bool = True) -> FuzzReport:
    """Every check against the document at ``url`` (see the module docstring); ``coverage``
    runs the coverage phase (boundary and negative values of every parameter) too."""
    schema = schemathesis.openapi.from_url(url, config=_config(coverage=coverage))
    if credentials is not None:
        schema.auth(refresh_interval=None)(_auth_provider(credentials))
    report = FuzzReport(url)
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(report, event)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
    report.seconds = time.monotonic() - started
    return report
