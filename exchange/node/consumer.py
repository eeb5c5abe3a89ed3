"""The consumer side of one exchange (docs/protocol.md §2 and §4). Framework-free.

(C1) authenticate the departmental system: its API key must belong to the ``X-Road-Client`` it
     names, and that client must be hosted by this node ... stops anonymous or borrowed callers
(C2) resolve the service in the verified registry; purpose header required ... stops calls
     without a declared purpose (purpose binding starts at the source)
(C2b) with a pseudonym translator: exchange the caller's own code for the provider's, sealed to the
     provider (``SubjectSealer``; cached per client, code and service) ... stops any node from
     holding or learning another agency's codes (docs/pseudonyms.md)
(C3) build the envelope, sign it with the client's key, record the request
(C4) send it to the provider's node address from the registry
(C5) verify the response (``exchange.verification.verify_response``) before anything of it is
     returned: signed by the provider, bound to our request hash and message id, body hash, fresh
(C6) record the response and hand the data to the caller with X-Road style headers
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from sqlalchemy import Engine

from exchange.canonical import sha256_b64
from exchange.central_config import Restriction, VerifiedRegistry
from exchange.db import read_cursor
from exchange.envelope import (
    MAX_BODY_BYTES,
    REPRESENTED_PARTY_PATTERN,
    RequestEnvelope,
    exchange_event,
    parse_unverified_response,
    seal_request,
)
from exchange.errors import (
    RETRY_AFTER_S,
    AuthenticationError,
    ClientError,
    MethodNotAllowedError,
    NotFoundError,
    OnceOnlyError,
    PayloadTooLargeError,
    TransportError,
    UnavailableError,
    VerificationError,
)
from exchange.group_commit import GroupCommitSink
from exchange.identifiers import ClientId, ServiceId, parse_part
from exchange.node.registry_cache import RegistryCache
from exchange.obligations import ObligationsLedger, Received
from exchange.ports import (
    AuditDecision,
    AuditEvent,
    AuditKind,
    SubjectSealer,
    SubjectTokenRequest,
    Transport,
)
from exchange.signing import MemberSigner
from exchange.subscriptions import Subscriptions
from exchange.verification import verify_response

__all__ = ["Consumer", "ConsumerCall", "ConsumerResult", "hash_api_key"]

_OWNER_SQL = "SELECT client_id, node FROM xchg_client_keys WHERE key_hash = ?"  # ClientKeyRow
_OWNER_SQL_PG = _OWNER_SQL.replace("?", "%s")

MESSAGE_PATH = "/x1/messages"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
API_KEY_CACHE_TTL_S = 5.0
"""How long a verified API key is trusted without asking the database again: a revoked key
(``onceonly keys revoke-api-key``) stops working within this many seconds. Only keys that were
found are cached; an unknown key is looked up every time."""
API_KEY_CACHE_MAX = 4096
MAX_RETRY_AFTER_S = 300
"""A provider's (unsigned) ``Retry-After`` is passed on, but never more than this."""


def _retry_after(headers: Mapping[str, str]) -> int:
    """The provider's ``Retry-After`` in seconds, bounded; the default when absent or garbage."""
    raw = headers.get("Retry-After") or headers.get("retry-after") or ""
    if raw.isdigit() and len(raw) <= 6:
        return max(1, min(int(raw), MAX_RETRY_AFTER_S))
    return RETRY_AFTER_S


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ConsumerCall:
    """One call of a departmental system to its node, as received (untrusted)."""

    method: str
    path: str  # after /r1/
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True, slots=True)
class ConsumerResult:
    status: int
    body: bytes
    headers: dict[str, str]


class ProviderError(TransportError):
    """The provider answered with an unsigned error: it could not verify or serve our message."""

    code = "Server.ServerProxy.ProviderError"
    status = 502


class InvalidResponse(VerificationError):
    """(C5) The provider's answer did not verify: not the departmental system's fault."""

    code = "Server.ServerProxy.InvalidResponse"
    status = 502


class Consumer:
    def __init__(
        self,
        *,
        node: str,
        signers: Mapping[ClientId, MemberSigner],
        registry: RegistryCache,
        transport: Transport,
        audit: GroupCommitSink,
        keys_engine: Engine,
        max_skew_s: int,
        timeout_s: float,
        clock: Callable[[], datetime],
        sealer: SubjectSealer | None = None,
        obligations: ObligationsLedger | None = None,
        subscriptions: Subscriptions | None = None,
    ) -> None:
        """``obligations``: the ledger that records each response received under usage terms
        (``exchange.obligations``); without it, the terms are verified and passed on only."""
        self._node = node
        self._obligations = obligations
        self._subscriptions = subscriptions
        self._sealer = sealer
        self._signers = dict(signers)
        self._registry = registry
        self._transport = transport
        self._audit = audit
        self._engine = keys_engine
        self._max_skew_s = max_skew_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._key_cache: dict[str, tuple[str, float]] = {}

    # (C1)
    def authenticate(self, headers: Mapping[str, str]) -> ClientId:
        """Synchronous (C1), for callers off the event loop."""
        client, key_hash = self._credentials(headers)
        return self._check_owner(client, self._cached_owner(key_hash) or self._owner(key_hash))

    async def authenticate_async(self, headers: Mapping[str, str]) -> ClientId:
        """(C1) on the event loop: a recently verified key needs no database round trip."""
        client, key_hash = self._credentials(headers)
        owner = self._cached_owner(key_hash)
        if owner is None:
            owner = await asyncio.to_thread(self._owner, key_hash)
        return self._check_owner(client, owner)

    def _credentials(self, headers: Mapping[str, str]) -> tuple[ClientId, str]:
        raw_client = headers.get("x-road-client", "")
        key = headers.get("x-onceonly-api-key") or ""
        if not key:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not raw_client:
            raise ClientError("the X-Road-Client header is required", code="Client.MissingClient")
        client = ClientId.parse(raw_client)
        if not key:
            raise AuthenticationError("an API key is required")
        return client, hash_api_key(key)

    def _cached_owner(self, key_hash: str) -> str | None:
        hit = self._key_cache.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def _owner(self, key_hash: str) -> str:
        """The client the key was issued to at this node, or "" (looked up by its hash)."""
        # one statement in autocommit (PostgreSQL: one round trip, no BEGIN/ROLLBACK)
        sql = _OWNER_SQL if self._engine.dialect.paramstyle == "qmark" else _OWNER_SQL_PG
        with read_cursor(self._engine) as cur:
            cur.execute(sql, (key_hash,))
            row = cur.fetchone()
        owner = str(row[0]) if row is not None and row[1] == self._node else ""
        if owner:
            if len(self._key_cache) >= API_KEY_CACHE_MAX:
                self._key_cache.clear()
            self._key_cache[key_hash] = (owner, time.monotonic() + API_KEY_CACHE_TTL_S)
        return owner

    def _check_owner(self, client: ClientId, stored: str) -> ClientId:
        # Compare in constant time even though the lookup was by hash: no timing hint on ids.
        if not hmac.compare_digest(stored.encode(), str(client).encode()):
            raise AuthenticationError("the API key does not belong to this client")
        if client not in self._signers:
            raise AuthenticationError("this client is not hosted by this node")
        return client

    def _resolve(self, path: str, now: datetime) -> tuple[ServiceId, str]:
        registry = self._registry.current(now)
        parts = [p for p in path.split("/")]
        if len(parts) < 5 or any(not p for p in parts[:5]):
            raise ClientError(
                "expected /r1/INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]/…",
                code="Client.InvalidServiceId",
            )
        provider = ClientId.parse("/".join(parts[:4]))
        code = parse_part(parts[4], "service code")
        rest = parts[5:]
        if rest and rest[0] and registry.find_service(provider, code, rest[0]) is not None:
            return ServiceId(provider, code, rest[0]), "/" + "/".join(rest[1:])
        if registry.find_service(provider, code, None) is not None:
            return ServiceId(provider, code, None), "/" + "/".join(rest)
        raise NotFoundError("unknown service", code="Server.ServerProxy.UnknownService")

    async def call(self, call: ConsumerCall) -> ConsumerResult:
        try:
            return await self._call(call)
        except OnceOnlyError as exc:
            await self.record_refusal(call, exc)
            raise

    async def record_refusal(self, call: ConsumerCall, exc: OnceOnlyError) -> None:
        """A call refused before anything was sent is audited too (who tried what, and why): the
        claimed client, the path and the purpose as sent (unverified, bounded), never the body.
        Records ``exc`` once (``exc.audited``)."""
        if exc.audited:
            return
        exc.audited = True
        await self._audit.record_async(
            AuditEvent(
                time=self._clock(),
                node=self._node,
                kind="refusal",
                decision="deny",
                client=call.headers.get("x-road-client", "")[:255] or None,
                service=call.path[:255] or None,
                purpose=call.headers.get("x-onceonly-purpose", "")[:128] or None,
                represented_party=call.headers.get("x-road-represented-party", "")[:255] or None,
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}"[:500],
                extra={"stage": "consumer"},
            )
        )

    async def _call(self, call: ConsumerCall) -> ConsumerResult:
        now = self._clock()
        h = call.headers
        method = call.method.upper()
        if method not in METHODS:
            raise MethodNotAllowedError("method not supported", allow=METHODS)
        client = await self.authenticate_async(h)  # (C1)
        if len(call.body) > MAX_BODY_BYTES:
            raise PayloadTooLargeError("body too large")
        # (C2) a purpose is declared (before anything is looked up), the service exists
        purpose = h.get("x-onceonly-purpose", "").strip()
        if not purpose:
            raise ClientError(
                "the X-OnceOnly-Purpose header is required", code="Client.MissingPurpose"
            )
        service, rest = self._resolve(call.path, now)
        parse_part(purpose, "purpose")
        message_id = h.get("x-road-id") or str(uuid.uuid4())
        parse_part(message_id, "X-Road-Id")
        fields_header = h.get("x-onceonly-fields")
        fields = (
            tuple(parse_part(f.strip(), "field") for f in fields_header.split(",") if f.strip())
            if fields_header
            else None
        )
        subject = h.get("x-onceonly-subject") or None
        consent_id = h.get("x-onceonly-consent-id") or None
        for value, what in ((subject, "subject"), (consent_id, "consent id")):
            if value is not None:
                parse_part(value, what)
        represented = h.get("x-road-represented-party") or None
        if represented is not None and not re.fullmatch(REPRESENTED_PARTY_PATTERN, represented):
            raise ClientError(
                "invalid X-Road-Represented-Party: expected CLASS/CODE in X-Road identifier"
                " characters",
                code="Client.InvalidIdentifier",
            )
        # Under a restricted statute every entry of the exchange is restricted, the request's
        # included (docs/audit.md, "Restricted entries"): decided from the verified registry.
        restriction = self._registry.current(now).restriction(client, service, purpose, now=now)
        token = None
        if subject is not None and self._sealer is not None:  # (C2b)
            token = await self._sealer.seal_subject(
                SubjectTokenRequest(
                    client=client,
                    subject=subject,
                    service=service,
                    citizen=consent_id is not None,
                    message_id=message_id,
                )
            )
        try:
            envelope = RequestEnvelope(
                message_id=message_id,
                created_at=now,
                client=str(client),
                service=str(service),
                method=method,
                path=rest + (f"?{call.query}" if call.query else ""),
                purpose=purpose,
                subject=None if token else subject,
                subject_token=token,
                consent_id=consent_id,
                consent_artefact=h.get("x-onceonly-consent") or None,
                user_id=h.get("x-road-userid") or None,
                issue=h.get("x-road-issue") or None,
                represented_party=represented,
                idempotency_key=h.get("idempotency-key") or None,
                fields=fields,
                content_type=h.get("content-type") or None,
                body_hash=sha256_b64(call.body),
            )
        except ValueError as exc:
            raise ClientError("invalid request headers", code="Client.BadRequest") from exc
        # (C3) sign and record.
        wire, sent_hash = seal_request(envelope, call.body, self._signers[client])
        own = subject  # this agency's own code: what its audit log keeps
        await self._record(
            envelope, "request", "info", now, sent_hash, None, subject=own, restriction=restriction
        )
        # (C4) send.
        registry = self._registry.current(now)
        url = registry.node_address(service.provider.member) + MESSAGE_PATH
        try:
            resp = await self._transport.post(
                url, wire, {"content-type": "application/json"}, timeout_s=self._timeout_s
            )
            if resp.status == 503:  # the provider node is there, but cannot serve for now
                raise UnavailableError(
                    "the provider node is unavailable; retry later",
                    code="Server.ServerProxy.ProviderUnavailable",
                    retry_after_s=_retry_after(resp.headers),
                )
            if resp.status != 200:
                code = (
                    resp.headers.get("X-Road-Error")
                    or resp.headers.get("x-road-error")
                    or "unknown"
                )
                raise ProviderError(f"the provider node refused the message ({code})")
            # (C5) verify before trusting a byte of it.
            verified = verify_response(
                parse_unverified_response(resp.body),
                request=envelope,
                sent_request_hash=sent_hash,
                registry=registry,
                now=self._clock(),
                max_skew_s=self._max_skew_s,
            )
            # The usage terms are signed with the envelope; they must be for our purpose.
            if verified.envelope.terms and verified.envelope.terms.purpose != envelope.purpose:
                raise VerificationError("the usage terms are for another purpose")
        except OnceOnlyError as exc:
            # What the departmental system is told is what is recorded (with the cause's detail).
            refusal = (
                InvalidResponse("the provider's response did not verify")
                if isinstance(exc, VerificationError)
                else exc
            )
            await self._record(
                envelope,
                "refusal",
                "error",
                self._clock(),
                sent_hash,
                refusal.status,
                f"{refusal.code}: {exc.detail}",
                subject=own,
                restriction=restriction,
            )
            exc.audited = refusal.audited = True
            if refusal is not exc:
                raise refusal from exc
            raise
        env = verified.envelope
        decision: AuditDecision = "allow" if env.status < 400 else "deny"
        await self._record(
            envelope,
            "response",
            decision,
            self._clock(),
            sent_hash,
            env.status,
            env.error_code,
            env.basis,
            env.decision_id,
            subject=own,
            restriction=restriction,
        )
        terms = env.terms if env.status < 400 else None
        if terms is not None and self._obligations is not None:
            # After the log entry: a response whose record failed is not handed over, so it
            # leaves no obligation behind. Batched with the responses received meanwhile.
            await self._obligations.record_async(
                Received(str(client), envelope.message_id, str(service), own, terms, self._clock())
            )
        if env.status in (200, 201) and envelope.method == "POST" and self._subscriptions:
            await self._link(envelope, verified.body, registry, subject=own)
        # (C6) answer the departmental system.
        headers = {
            "content-type": env.content_type or "application/octet-stream",
            "x-road-id": envelope.message_id,
            "x-road-client": str(client),
            "x-road-service": str(service),
            "x-road-request-hash": sent_hash,
        }
        if env.error_code:
            headers["x-road-error"] = env.error_code
        if env.status == 503:  # the provider's registry or database is down for now
            headers["retry-after"] = str(RETRY_AFTER_S)
        if env.basis:
            # HTTP header values are Latin-1: a statute's name may not be (RFC 3986 escaping).
            headers["x-onceonly-basis"] = quote(env.basis, safe=":/-_.@+")
        if env.fields is not None:
            headers["x-onceonly-fields"] = ",".join(env.fields)
        if env.decision_id:
            headers["x-onceonly-decision-id"] = env.decision_id
        if env.told is not None:
            headers["x-onceonly-told"] = ",".join(env.told)
        if terms is not None:
            headers["x-onceonly-usage-terms"] = json.dumps(
                terms.model_dump(mode="json"), separators=(",", ":"), sort_keys=True
            )
        return ConsumerResult(env.status, verified.body, headers)

    async def _link(
        self,
        envelope: RequestEnvelope,
        body: bytes,
        registry: VerifiedRegistry,
        *,
        subject: str | None,
    ) -> None:
        """A subscription this system made (docs/protocol.md §9): remember its own code for it,
        so that the change events it receives name the person as this agency knows them."""
        service = ServiceId.parse(envelope.service)
        if registry.service(service).event_of is None or self._subscriptions is None:
            return
        try:
            sub_id = json.loads(body).get("subscription_id")
        except (ValueError, AttributeError):
            return
        if isinstance(sub_id, str):
            await asyncio.to_thread(
                self._subscriptions.link,
                subscription_id=sub_id,
                client=envelope.client,
                service=envelope.service,
                subject=subject,
                now=self._clock(),
            )

    async def _record(
        self,
        env: RequestEnvelope,
        kind: AuditKind,
        decision: AuditDecision,
        now: datetime,
        req_hash: str,
        status: int | None,
        reason: str | None = None,
        basis: str | None = None,
        decision_id: str | None = None,
        *,
        subject: str | None = None,
        restriction: Restriction | None = None,
    ) -> None:
        await self._audit.record_async(
            exchange_event(
                env,
                subject=subject,
                restriction=restriction,
                node=self._node,
                kind=kind,
                decision=decision,
                time=now,
                request_hash=req_hash,
                status=status,
                reason=reason,
                basis=basis,
                decision_id=decision_id,
            )
        )
