"""The consent gate as seen from a provider node: verify locally, then ask the consent service.

Deployment (issue 5): the consent service ("information bank") is one component with its own
database; provider nodes are separate processes. ``RemoteConsentGate`` implements
``exchange.ports.ConsentGate`` for them:

1. verify the artefact with the consent service's key from the verified central registry
   (signature, ``alg``/``typ``/``kid`` pins) — a forged or altered consent never leaves the node;
2. the artefact's own scope must cover the exchange (same words as the store check) — a node does
   not bother the service about an exchange the signed consent cannot cover;
3. ask the consent service (``POST /consent/v1/gate/check|use``, signed by ``sign_request``) — the
   store's status wins: revocation, pause, expiry, spending, limits; nothing is cached;
4. fail closed: an answer that is not the protocol → deny; unreachable, timed out or a 5xx →
   ``UnavailableError`` (503 with ``Retry-After``): nothing is released either way, and the
   caller (a procedure step, a departmental system) learns that asking again later may succeed
   instead of taking a refusal for the citizen's decision.

Called from a worker thread (the port is synchronous), so it uses a sync ``httpx.Client`` with a
timeout. Trust assumption: the consent service's TLS/URL come from the verified registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import httpx
from pydantic import ValidationError

from consent._match import scope_mismatch
from consent.artefact import ConsentArtefactVerifier
from consent.model import GateAnswer, GateRequest
from exchange.errors import UnavailableError, VerificationError
from exchange.ports import ConsentDecision, ConsentQuery

__all__ = ["CONSENT_UNAVAILABLE", "DEFAULT_TIMEOUT_S", "GATE_PATH", "RemoteConsentGate"]

DEFAULT_TIMEOUT_S = 2.0
GATE_PATH = "/consent/v1/gate"
CONSENT_UNAVAILABLE = "Server.ServerProxy.ConsentServiceUnavailable"
MAX_ANSWER_BYTES = 64 * 1024
SignRequest = Callable[[str, str, bytes], Mapping[str, str]]
"""``sign_request(method, path, body) -> headers`` proving this node to the consent service."""


def _deny(query: ConsentQuery, reason: str) -> ConsentDecision:
    return ConsentDecision(
        allow=False, consent_id=query.consent_id, fields=frozenset(), reasons=(reason,)
    )


class RemoteConsentGate:
    """``ConsentGate`` over HTTP to the consent service, verifying the artefact locally first."""

    def __init__(
        self,
        base_url: str,
        sign_request: SignRequest,
        verifier: ConsentArtefactVerifier,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        require_artefact: bool = True,
        http_client: httpx.Client | None = None,
    ) -> None:
        """``http_client``: a configured client to share (with its own timeout); otherwise one is
        made with ``timeout_s``."""
        self._base = base_url.rstrip("/")
        self._sign = sign_request
        self._verifier = verifier
        self._require_artefact = require_artefact
        self._owns_client = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout_s, follow_redirects=False)

    def close(self) -> None:
        if self._owns_client:
            self._http.close()

    def check(self, query: ConsentQuery) -> ConsentDecision:
        return self._ask("check", query)

    def use(self, query: ConsentQuery) -> ConsentDecision:
        return self._ask("use", query)

    def _local(self, query: ConsentQuery) -> str | None:
        if query.artefact is None:
            return "no consent artefact was presented" if self._require_artefact else None
        try:
            claims = self._verifier.verify(query.artefact)  # (1)
        except VerificationError:
            return "consent artefact verification failed"
        if claims.cid != query.consent_id:
            return "the consent artefact is for another consent"
        return scope_mismatch(  # (2)
            subject=claims.sub,
            client=claims.client,
            services=claims.services,
            purpose=claims.purpose,
            fields=claims.fields,
            valid_from=claims.valid_from,
            valid_until=claims.valid_until,
            query=query,
        )

    def _ask(self, verb: str, query: ConsentQuery) -> ConsentDecision:
        reason = self._local(query)
        if reason is not None:
            return _deny(query, reason)
        try:
            asked = GateRequest(
                consent_id=query.consent_id,
                artefact=query.artefact,
                subject=query.subject,
                client=str(query.client),
                service=str(query.service),
                purpose=query.purpose,
                fields=query.fields,
                message_id=query.message_id,
                idempotency_key=query.idempotency_key,
            )
        except (
            ValidationError
        ):  # a value the protocol cannot carry: refuse, never raise (fail closed)
            return _deny(query, "the request cannot be put to the consent service")
        body = json.dumps(asked.model_dump(mode="json"), separators=(",", ":")).encode()
        path = f"{GATE_PATH}/{verb}"
        try:
            headers = {"content-type": "application/json", **self._sign("POST", path, body)}
            # The timeout is the client's own (set in __init__ when the client is ours).
            response = self._http.post(self._base + path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise UnavailableError(
                "the consent service could not be reached", code=CONSENT_UNAVAILABLE
            ) from exc  # (4)
        if response.status_code >= 500:
            raise UnavailableError(
                f"the consent service answered HTTP {response.status_code}",
                code=CONSENT_UNAVAILABLE,
            )
        if response.status_code != 200 or len(response.content) > MAX_ANSWER_BYTES:
            return _deny(query, f"the consent service answered HTTP {response.status_code}")
        try:
            answer = GateAnswer.model_validate_json(response.content)
        except ValidationError:
            return _deny(query, "the consent service answered something that is not the protocol")
        if answer.consent_id != query.consent_id:
            return _deny(query, "the consent service answered about another consent")
        if not answer.allow:
            return ConsentDecision(
                allow=False,
                consent_id=query.consent_id,
                fields=frozenset(),
                reasons=answer.reasons or ("the consent service refused",),
            )
        fields = frozenset(answer.fields)
        if query.fields and not fields <= set(query.fields):
            return _deny(query, "the consent service allowed fields that were not asked for")
        return ConsentDecision(
            allow=True,
            consent_id=query.consent_id,
            fields=fields,
            retention_days=answer.retention_days,
        )
