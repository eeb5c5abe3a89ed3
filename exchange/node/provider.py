"""The provider side of one exchange (docs/protocol.md §3, steps 1–13). Framework-free.

Steps 1–7 are ``exchange.verification.verify_request``; here:
  (8)  replay protection ......................... ``exchange.replay``
  (9)  access right from the verified registry ... deny by default (X-Road)
  (9b) the subject as this agency knows it: opened from the translator's sealed token (steps
       T1–T4 of ``exchange.subject_token``), or translated locally in the comparison-only mode
  (10) consent check, if the request names one ... ``ConsentGate.check`` (no side effect)
  (11) policy decision: purpose, legal basis, fields (``PolicyDecider``)
  (12) consent use, when consent is the basis .... ``ConsentGate.use`` (atomic: one-time spent once)
  (13) the adapter, then the result filtered to the allowed fields, signed, bound to the request
Every outcome — allowed or refused — is recorded in the audit sink before the answer leaves.
Refusals of verified requests are signed like any response, so the consumer can trust them;
requests that fail verification get an unsigned problem (signing for unknown senders would make
the node a signing oracle).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from exchange.canonical import sha256_b64
from exchange.central_config import (
    DEFAULT_RETENTION_DAYS,
    Restriction,
    ServiceEntry,
    VerifiedRegistry,
)
from exchange.db import as_unavailable
from exchange.envelope import (
    ResponseEnvelope,
    UsageTerms,
    exchange_event,
    parse_unverified_request,
    seal,
)
from exchange.errors import (
    ClientError,
    ConfigurationError,
    NotFoundError,
    OnceOnlyError,
    RefusalError,
    TransportError,
    VerificationError,
)
from exchange.group_commit import GroupCommit, GroupCommitSink
from exchange.identifiers import ClientId
from exchange.node.registry_cache import RegistryCache
from exchange.obligations import ObligationsLedger
from exchange.ports import (
    CITIZEN_AGENCY,
    AdapterRequest,
    AuditDecision,
    AuditEvent,
    AuditKind,
    ConsentDecision,
    ConsentGate,
    ConsentQuery,
    JsonValue,
    PolicyDecider,
    PolicyDecision,
    PolicyInput,
    RegistryAdapter,
    SubjectTranslator,
)
from exchange.replay import ReplayGuard
from exchange.sealing import SealingKey
from exchange.signing import MemberSigner
from exchange.subject_token import OpenedTokens, SealedSubject
from exchange.subscriptions import (
    Change,
    Published,
    SubscriptionRequest,
    Subscriptions,
    change_key,
)
from exchange.verification import VerifiedRequest, verify_request
from exchange.web.problems import problem_document

__all__ = ["Provider", "ProviderAnswer", "filter_fields", "usage_terms"]

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    status: int
    """The HTTP status: 200 for every signed answer, refusals included."""
    body: bytes
    headers: Mapping[str, str]
    outcome: int
    """The status the answer stands for (inside the signed envelope for a signed one)."""
    error_code: str | None = None
    """The X-Road error code of a refusal or failure."""


def filter_fields(data: JsonValue, allowed: frozenset[str]) -> JsonValue:
    """Data minimisation on the way out: keep only allowed top-level keys of each record."""
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k in allowed}
    if isinstance(data, list):
        return [filter_fields(item, allowed) for item in data]
    return data


def _problem(status: int, code: str, detail: str, reasons: tuple[str, ...] = ()) -> bytes:
    extra = {"reasons": list(reasons)} if reasons else None
    return json.dumps(
        problem_document(status, code, detail, extra=extra), ensure_ascii=False
    ).encode()


def _unavailable(exc: Exception) -> OnceOnlyError:
    """The node's own database failed under a subscription or a publication: 503, retry."""
    found = as_unavailable(exc)
    if found is None:
        raise exc
    return found


class UpstreamFailure(TransportError):
    """The adapter or the registry behind it failed in a way it did not report itself."""

    code = "Server.ServiceFailed"
    status = 502


@dataclass(frozen=True, slots=True)
class _Authorized:
    local_subject: str | None
    fields: frozenset[str]
    basis: str | None
    decision_id: str | None
    terms: UsageTerms | None = None


def usage_terms(
    registry: VerifiedRegistry,
    req: VerifiedRequest,
    basis: str | None,
    consent: ConsentDecision | None,
    now: datetime,
) -> UsageTerms:
    """The usage terms of an allowed exchange (docs/protocol.md, "Usage terms"): the consent's
    data life and no onward transfer when consent is the basis; otherwise the retention and the
    onward-transfer term of the statute the exchange falls under (``DEFAULT_RETENTION_DAYS`` and
    no onward transfer when none applies or it names none)."""
    purpose = req.envelope.purpose
    days: int | None
    if basis and basis.startswith("consent:") and consent is not None:
        days, onward = consent.retention_days, False
    else:
        statute = registry.statute_for(req.client, req.service, purpose)
        days = statute.retention_days if statute else None
        onward = statute.onward_transfer if statute else False
    days = DEFAULT_RETENTION_DAYS if days is None else days
    return UsageTerms(purpose=purpose, delete_by=(now + timedelta(days=days)).date(), onward=onward)


class Provider:
    def __init__(
        self,
        *,
        node: str,
        signers: Mapping[ClientId, MemberSigner],
        registry: RegistryCache,
        replay: ReplayGuard,
        adapters: Mapping[ClientId, RegistryAdapter],
        audit: GroupCommitSink,
        policy: PolicyDecider | None,
        consent: ConsentGate | None,
        subjects: SubjectTranslator | None = None,
        seal_keys: Mapping[ClientId, SealingKey] | None = None,
        max_skew_s: int,
        clock: Callable[[], datetime],
        inline: bool = False,
        obligations: ObligationsLedger | None = None,
        ledger_inline: bool = True,
        subscriptions: Subscriptions | None = None,
    ) -> None:
        """``seal_keys``: subjects arrive sealed by the pseudonym translator, opened with the
        hosted subsystem's own key; a plain subject is then refused. Without them, ``subjects``
        translates plain ones (the shared-table mode, for comparison only)."""
        self._node = node
        self._signers = dict(signers)
        self._hosted = frozenset(self._signers)
        self._registry = registry
        self._replay = replay
        self._adapters = dict(adapters)
        self._audit = audit
        self._policy = policy
        self._consent = consent
        self._subjects = subjects
        self._seal_keys = dict(seal_keys) if seal_keys is not None else None
        self._opened = OpenedTokens()
        self._max_skew_s = max_skew_s
        self._clock = clock
        self._inline = inline
        self._obligations = obligations
        self._ledger_inline = ledger_inline  # the ledger's reads may run on the loop (SQLite)
        self._re_serves: dict[str, str | None] = {}
        self._subscriptions = subscriptions
        self._publications: GroupCommit[Change, tuple[list[Published], tuple[str, ...]]] = (
            GroupCommit(subscriptions.publish_many if subscriptions else lambda _: [])
        )

    # -- entry point -----------------------------------------------------------------------------

    async def handle(self, raw: bytes) -> ProviderAnswer:
        now = self._clock()
        try:
            registry = self._registry.current(now)
            unverified = parse_unverified_request(raw)  # (1)
            verified = verify_request(  # (2)–(7)
                unverified,
                registry=registry,
                hosted=self._hosted,
                now=now,
                max_skew_s=self._max_skew_s,
            )
        except OnceOnlyError as exc:
            await self.record_unverified(exc, now)
            detail = (
                "message verification failed" if isinstance(exc, VerificationError) else exc.detail
            )
            return ProviderAnswer(
                exc.status,
                _problem(exc.status, exc.code, detail),
                {"content-type": PROBLEM_JSON, "x-road-error": exc.code},
                exc.status,
                exc.code,
            )
        # An exchange under a restricted statute is restricted in the log from its first entry
        # (docs/audit.md, "Restricted entries"): decided from the verified registry alone.
        restriction = registry.restriction(
            verified.client, verified.service, verified.envelope.purpose, now=now
        )
        auth: _Authorized | None = None
        told: tuple[str, ...] | None = None
        try:
            # (8) replay, batched with the messages arriving meanwhile (one transaction per batch).
            await self._replay.remember_async(
                str(verified.client), verified.envelope.message_id, now=now
            )
            # (9)–(12): on the loop when every part is local CPU work, except a consent check,
            # which asks the consent service over the network.
            if (
                self._inline
                and not verified.envelope.consent_id
                and (self._ledger_inline or self._re_served(verified) is None)
            ):
                auth = self._authorize(verified, now)
            else:
                auth = await asyncio.to_thread(self._authorize, verified, now)
            status, body, ctype, told = await self._serve(verified, auth, now)
            error_code = None
            await self._record(
                verified,
                "response",
                "allow",
                now,
                status=status,
                body_hash=sha256_b64(body),
                basis=auth.basis,
                decision_id=auth.decision_id,
                subject=auth.local_subject,
                restriction=restriction,
            )
        except OnceOnlyError as exc:
            auth = None
            status, ctype, error_code = exc.status, PROBLEM_JSON, exc.code
            reasons = exc.reasons if isinstance(exc, RefusalError) else ()
            body = _problem(exc.status, exc.code, exc.detail, reasons)
            await self._record(
                verified,
                "refusal",
                "deny",
                now,
                status=status,
                reason=f"{exc.code}: {exc.detail}",
                restriction=restriction,
            )
        return self._sign(verified, status, body, ctype, auth, error_code, told)

    # -- steps -----------------------------------------------------------------------------------

    def _authorize(self, req: VerifiedRequest, now: datetime) -> _Authorized:
        env = req.envelope
        registry = self._registry.current(now)
        # (9) access right, deny by default.
        service = registry.service(req.service)
        if registry.access_right(req.client, req.service, now=now) is None:
            raise RefusalError(
                "the client has no access right to this service",
                reasons=("no access right in the central registry",),
            )
        requested = tuple(env.fields) if env.fields else tuple(service.fields)
        unknown = set(requested) - set(service.fields)
        if unknown:
            raise RefusalError(
                f"unknown fields requested: {', '.join(sorted(unknown))}", code="Client.BadRequest"
            )
        # (9b) the subject, as this agency knows it: no master id crosses agencies.
        sealed = self._open_subject(req, now)
        if sealed is not None:
            local_subject: str | None = sealed.subject
        else:
            local_subject = self._translate(env.subject, str(req.client), str(req.service.provider))
        self._check_onward(req, local_subject)  # (9c)
        # (10) consent, checked without side effects.
        consent: ConsentDecision | None = None
        query: ConsentQuery | None = None
        if env.consent_id:
            if self._consent is None:
                raise ConfigurationError("no consent service configured")
            query = ConsentQuery(
                consent_id=env.consent_id,
                artefact=env.consent_artefact,
                subject=self._citizen(env.subject, sealed, req),
                client=req.client,
                service=req.service,
                purpose=env.purpose,
                fields=requested,
                now=now,
                message_id=env.message_id,
                # Only a change is retried under its key (the adapter answers a retry from its
                # idempotency table); a read under a key must not re-read on a spent consent.
                idempotency_key=(env.idempotency_key or None) if service.changes else None,
            )
            consent = self._consent.check(query)
            # A consent the caller relies on that does not cover the request is refused outright,
            # whatever else might allow it: the caller said consent is its basis.
            if not consent:
                raise RefusalError(
                    "the consent does not cover this request",
                    code="Server.ServerProxy.ConsentRefused",
                    reasons=consent.reasons,
                )
        # (11) policy: purpose binding, legal basis, data minimisation.
        if self._policy is not None:
            decision: PolicyDecision = self._policy.decide(
                PolicyInput(
                    client=req.client,
                    service=req.service,
                    purpose=env.purpose,
                    subject=local_subject,
                    now=now,
                    requested_fields=requested,
                    consent=consent,
                    operation="change" if service.changes else "read",
                    represented_party=env.represented_party,
                )
            )
            if not decision:
                raise RefusalError(
                    "the access policy refused this request",
                    reasons=decision.reasons or ("refused by policy",),
                )
            fields, basis, decision_id = decision.fields, decision.basis, decision.decision_id
        else:
            if service.purposes and env.purpose not in service.purposes:
                raise RefusalError(
                    "purpose not declared for this service",
                    reasons=(f"purpose {env.purpose!r} is not bound to this service",),
                )
            fields, basis, decision_id = frozenset(requested), "access-right", None
        # (12) consent use, atomically, when consent is what allows it.
        if basis and basis.startswith("consent:"):
            if self._consent is None or query is None:
                raise RefusalError("consent basis without a consent", reasons=("no consent given",))
            used = self._consent.use(query)
            if not used:
                raise RefusalError(
                    "the consent does not cover this request",
                    code="Server.ServerProxy.ConsentRefused",
                    reasons=used.reasons,
                )
        terms = usage_terms(registry, req, basis, consent, now)
        return _Authorized(local_subject, frozenset(fields), basis, decision_id, terms)

    def _re_served(self, req: VerifiedRequest) -> str | None:
        """The service ``req``'s service re-serves, if it is declared so (adapter metadata,
        cached: no database read)."""
        key = str(req.service)
        if key not in self._re_serves:
            adapter = self._adapters.get(req.service.provider)
            found = [
                d.re_serves
                for d in (adapter.services() if adapter is not None else ())
                if d.code == req.service.code
                and (req.service.version is None or d.version in (None, req.service.version))
            ]
            self._re_serves[key] = found[0] if found else None
        return self._re_serves[key]

    def _check_onward(self, req: VerifiedRequest, subject: str | None) -> None:
        """(9c) A service declared as re-serving another (``ServiceDescription.re_serves``) is
        refused for a subject whose data this node received from that service under "no onward
        transfer" and has not deleted (the obligations ledger; docs/protocol.md)."""
        if self._obligations is None or subject is None:
            return
        source = self._re_served(req)
        if source and self._obligations.received_without_onward(subject, source):
            raise RefusalError(
                "this node received the data under usage terms that forbid passing it on",
                code="Server.ServerProxy.OnwardTransferRefused",
                reasons=(f"data from {source} was received under no onward transfer",),
            )

    def _open_subject(self, req: VerifiedRequest, now: datetime) -> SealedSubject | None:
        """(9b) with the translator: steps T1–T4 (``exchange.subject_token``) on the token."""
        env = req.envelope
        if self._seal_keys is None:
            if env.subject_token is not None:
                raise ClientError(
                    "this node takes no sealed subjects", code="Client.SubjectTokenNotAccepted"
                )
            return None
        if env.subject is not None:
            # A plain code would be the consumer's own: it means nothing here, and accepting it
            # would invite consumers to guess this agency's codes.
            raise ClientError(
                "subjects travel sealed by the pseudonym translator",
                code="Client.PlainSubjectRefused",
            )
        if env.subject_token is None:
            return None
        provider = req.service.provider
        key = self._seal_keys.get(provider)
        if key is None:
            raise ConfigurationError(f"no sealing key for {provider} at this node")
        registry = self._registry.current(now)
        try:
            return self._opened.open(
                env.subject_token,
                verifier=registry.translator_verifier,
                key=key,
                client=str(req.client),
                service=str(req.service),
                provider=str(provider),
                now=now,
                max_skew_s=self._max_skew_s,
            )
        except VerificationError as exc:
            raise VerificationError(
                "the subject token did not verify", code="Server.ServerProxy.InvalidSubjectToken"
            ) from exc

    def _citizen(
        self, subject: str | None, sealed: SealedSubject | None, req: VerifiedRequest
    ) -> str | None:
        """The citizen's platform identity, for the consent check only."""
        if sealed is None:
            return self._translate(subject, str(req.client), CITIZEN_AGENCY)
        if sealed.citizen is None:
            raise RefusalError(
                "the subject token carries no citizen identity for a consent check",
                code="Server.ServerProxy.ConsentRefused",
                reasons=("no citizen identity in the subject token",),
            )
        return sealed.citizen

    def _translate(self, subject: str | None, from_agency: str, to_agency: str) -> str | None:
        if subject is None or self._subjects is None:
            return subject
        return self._subjects.translate(subject, from_agency=from_agency, to_agency=to_agency)

    async def _serve(
        self, req: VerifiedRequest, auth: _Authorized, now: datetime
    ) -> tuple[int, bytes, str, tuple[str, ...] | None]:
        """(13) An event service is served here (its subscriptions); any other by its adapter,
        and a change it answered 2xx is published to that change's subscribers (§9)."""
        registry = self._registry.current(now)
        entry = registry.service(req.service)
        if entry.event_of is not None:
            return (*await self._subscription(req, auth, now), None)
        try:
            status, body, ctype = await self._call_adapter(req, auth)
        except OnceOnlyError:
            raise
        except Exception as exc:  # a broken adapter is the provider's fault, not the caller's
            unavailable = as_unavailable(exc)  # its database is down: retry later, 503
            if unavailable is not None:
                raise unavailable from exc
            raise UpstreamFailure("the registry behind this service failed") from exc
        told: tuple[str, ...] | None = None
        if entry.changes and 200 <= status < 300 and self._subscriptions is not None:
            events = registry.events_of(req.service)
            if events:
                told = await self._publish(req, auth, events, registry, now)
        return status, body, ctype, told

    async def _subscription(
        self, req: VerifiedRequest, auth: _Authorized, now: datetime
    ) -> tuple[int, bytes, str]:
        if self._subscriptions is None:
            raise NotFoundError(
                "this node serves no change events", code="Server.ServerProxy.UnknownService"
            )
        env = req.envelope
        ask = SubscriptionRequest(
            service=req.service,
            client=req.client,
            method=env.method,
            path=env.path,
            subject=auth.local_subject,
            purpose=env.purpose,
            fields=auth.fields,
            basis=auth.basis,
            consent_id=env.consent_id if (auth.basis or "").startswith("consent:") else None,
        )
        try:
            status, doc = await asyncio.to_thread(self._subscriptions.serve, ask, now)
        except OnceOnlyError:
            raise
        except Exception as exc:
            raise _unavailable(exc) from exc
        return status, json.dumps(doc, ensure_ascii=False).encode(), "application/json"

    async def _publish(
        self,
        req: VerifiedRequest,
        auth: _Authorized,
        events: list[ServiceEntry],
        registry: VerifiedRegistry,
        now: datetime,
    ) -> tuple[str, ...]:
        """The change's events, written before the answer leaves; each disclosure audited with
        the subject, so the citizen sees who was told (docs/audit.md). Returns the subscribers
        told (for a retry of a change already published: those its first publication told)."""
        assert self._subscriptions is not None
        env = req.envelope
        change = Change(
            change=req.service,
            events=events,
            key=change_key(str(req.client), env.idempotency_key, env.message_id),
            subject=auth.local_subject,
            body=req.body,
            registry=registry,
            now=now,
        )
        try:
            published, told = await self._publications.submit(change)
        except Exception as exc:  # the change is made; a retry under its key publishes it
            raise _unavailable(exc) from exc
        for p in published:
            await self._audit.record_async(
                AuditEvent(
                    time=now,
                    node=self._node,
                    kind="event.published",
                    decision="allow",
                    client=p.subscriber,
                    service=p.service,
                    purpose=p.purpose,
                    subject=p.subject,
                    basis=p.basis,
                    message_id=p.event_id,
                    reason=f"told of the change made by {env.message_id}",
                    extra={"subscription_id": p.subscription_id, "fields": ",".join(p.fields)},
                )
            )
        return told

    async def _call_adapter(
        self, req: VerifiedRequest, auth: _Authorized
    ) -> tuple[int, bytes, str]:
        adapter = self._adapters.get(req.service.provider)
        if adapter is None:
            raise NotFoundError(
                "no registry behind this subsystem", code="Server.ServerProxy.UnknownService"
            )
        env = req.envelope
        path, _, query = env.path.partition("?")
        # (13) the adapter sees only the allowed fields; its answer is filtered again (not trusted).
        result = await adapter.call(
            AdapterRequest(
                service=req.service,
                client=req.client,
                method=env.method,
                path=path,
                query=query,
                subject=auth.local_subject,
                purpose=env.purpose,
                message_id=env.message_id,
                fields=auth.fields,
                body=req.body,
                content_type=env.content_type,
                idempotency_key=env.idempotency_key,
            )
        )
        data = filter_fields(result.data, auth.fields) if result.status < 400 else result.data
        return result.status, json.dumps(data, ensure_ascii=False).encode(), "application/json"

    def _sign(
        self,
        req: VerifiedRequest,
        status: int,
        body: bytes,
        ctype: str,
        auth: _Authorized | None,
        error_code: str | None,
        told: tuple[str, ...] | None = None,
    ) -> ProviderAnswer:
        now = self._clock()
        env = ResponseEnvelope(
            message_id=req.envelope.message_id,
            request_hash=req.request_hash,
            created_at=now,
            provider=str(req.service.provider),
            status=status,
            content_type=ctype,
            body_hash=sha256_b64(body),
            fields=tuple(sorted(auth.fields)) if auth else None,
            basis=auth.basis if auth else None,
            decision_id=auth.decision_id if auth else None,
            error_code=error_code,
            terms=auth.terms if auth and status < 400 else None,
            told=told,
        )
        wire = seal(env, body, self._signers[req.service.provider])
        return ProviderAnswer(200, wire, {"content-type": "application/json"}, status, error_code)

    # -- audit -----------------------------------------------------------------------------------

    async def _record(
        self,
        req: VerifiedRequest,
        kind: AuditKind,
        decision: AuditDecision,
        now: datetime,
        *,
        status: int,
        reason: str | None = None,
        body_hash: str | None = None,
        basis: str | None = None,
        decision_id: str | None = None,
        subject: str | None = None,
        restriction: Restriction | None = None,
    ) -> None:
        await self._audit.record_async(
            exchange_event(
                req.envelope,
                subject=subject,
                restriction=restriction,
                node=self._node,
                kind=kind,
                decision=decision,
                time=now,
                request_hash=req.request_hash,
                status=status,
                reason=reason,
                body_hash=body_hash,
                basis=basis,
                decision_id=decision_id,
            )
        )

    async def record_unverified(self, exc: OnceOnlyError, now: datetime) -> None:
        """A message refused before it verified (steps 1–7, or its body over the limit): no
        client, service or subject is recorded, since none of them is proven. Records once."""
        if exc.audited:
            return
        exc.audited = True
        await self._audit.record_async(
            AuditEvent(
                time=now,
                node=self._node,
                kind="refusal",
                decision="deny",
                status=exc.status,
                reason=f"{exc.code}: {exc.detail}",
                extra={"stage": "verification"},
            )
        )
