"""A provider node's consent gate, following the consent service named in the verified registry.

Trust assumption: the consent service's URL and artefact key come only from the central registry
document the node has verified; with none named, every consent-based request is refused (fail
closed). The gate signs its calls as the node (``exchange.node_requests``).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from consent.artefact import ConsentArtefactVerifier
from consent.remote import RemoteConsentGate
from exchange.central_config import ConsentServiceEntry, VerifiedRegistry
from exchange.identifiers import ClientId
from exchange.node_requests import sign_node_request
from exchange.ports import ConsentDecision, ConsentQuery
from exchange.signing import MemberSigner

__all__ = ["RegistryConsentGate"]


class RegistryConsentGate:
    """A provider node's consent gate: the consent service named in the verified registry.

    Rebuilt whenever the registry names another consent service or key; with none named, every
    consent-based request is refused (fail closed)."""

    def __init__(self, signer: MemberSigner, client: ClientId, *, timeout_s: float) -> None:
        self._signer = signer
        self._client = client
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._entry: ConsentServiceEntry | None = None
        self._gate: RemoteConsentGate | None = None

    def on_registry(self, registry: VerifiedRegistry) -> None:
        entry = registry.document.consent_service
        with self._lock:
            if entry == self._entry:
                return
            old, self._entry = self._gate, entry
            self._gate = None
            if entry is not None:
                self._gate = RemoteConsentGate(
                    entry.url,
                    self._sign,
                    ConsentArtefactVerifier.from_pem(entry.issuer_public_key),
                    timeout_s=self._timeout_s,
                )
        if old is not None:
            old.close()

    def _sign(self, method: str, path: str, body: bytes) -> dict[str, str]:
        return sign_node_request(
            self._signer, self._client, method, path, body, now=datetime.now(UTC)
        )

    def _current(self, query: ConsentQuery) -> RemoteConsentGate | ConsentDecision:
        with self._lock:
            gate = self._gate
        if gate is None:
            return ConsentDecision(
                False, query.consent_id, frozenset(), ("no consent service in the registry",)
            )
        return gate

    def check(self, query: ConsentQuery) -> ConsentDecision:
        gate = self._current(query)
        return gate if isinstance(gate, ConsentDecision) else gate.check(query)

    def use(self, query: ConsentQuery) -> ConsentDecision:
        gate = self._current(query)
        return gate if isinstance(gate, ConsentDecision) else gate.use(query)

    def close(self) -> None:
        with self._lock:
            if self._gate is not None:
                self._gate.close()
