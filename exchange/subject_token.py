"""Subject tokens: the provider's own code for a citizen, sealed to it by the translator.

The central pseudonym translator (docs/pseudonyms.md) answers a consumer node's translation with
a token the consumer cannot read and the provider can verify::

    token  = base64url(JSON {"claims": {...}, "signature": "<detached JWS>"})
    claims = {v, client, service, provider, issued_at, expires_at, citizen, sealed}
    sealed = exchange.sealing.seal(provider's sealing key,
                                   JSON {"subject": provider's code, "citizen": platform id | null},
                                   aad = canonical claims without "sealed")

The JWS (``typ`` ``onceonly-subject-token+jws``) is by the translator key the verified registry
names. ``citizen`` says whether the sealed part carries the citizen's platform identity (only
asked for when the request names a consent, whose artefact carries that identity anyway).

A provider verifies (docs/protocol.md §3, step 9b):
  (T1) the translator's signature over the canonical claims ...... stops forged tokens
  (T2) client and service equal the (verified) envelope's ........ stops a token moved to another
       client or service (or borrowed by another consumer)
  (T3) the token is current (``issued_at`` not in the future beyond the clock-skew window,
       ``expires_at`` not passed) ................................ stops old tokens replayed
       after an access right or a pseudonym was withdrawn
  (T4) the sealed part opens with the provider's own key and this token's claims as associated
       data ...................................................... stops a sealed part moved
       between tokens, and tells a tampered one apart
Every failure is one opaque ``VerificationError``. ``OpenedTokens`` remembers T1 and T4 for a
token's exact text (a consumer reuses a token for its life), and runs T2 and T3 on every use.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.canonical import canonical_json
from exchange.errors import OnceOnlyError, VerificationError
from exchange.sealing import MAX_SEALED_CHARS, SealingKey, SealingPublicKey, seal
from exchange.signing import TranslatorSigner, TranslatorVerifier

__all__ = [
    "MAX_TOKEN_CHARS",
    "OpenedTokens",
    "SealedSubject",
    "SubjectTokenClaims",
    "issue_subject_token",
    "open_subject_token",
    "peek_subject_token",
]

MAX_TOKEN_CHARS = 4096
DOMAIN = "onceonly-subject-token"
_OPAQUE = "subject token verification failed"


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SubjectTokenClaims(_Wire):
    v: Literal[1] = 1
    client: str = Field(max_length=255)
    service: str = Field(max_length=255)
    provider: str = Field(max_length=255)
    issued_at: datetime
    expires_at: datetime
    citizen: bool
    sealed: str = Field(max_length=MAX_SEALED_CHARS)

    def associated_data(self) -> bytes:
        """What the sealed part is bound to: every claim but itself, under this token's domain."""
        return canonical_json(
            {"domain": DOMAIN, **self.model_dump(mode="json", exclude={"sealed"})}
        )


class SealedSubject(_Wire):
    """The sealed part: the provider agency's own code, and the platform id when asked for."""

    subject: str = Field(min_length=1, max_length=128)
    citizen: str | None = Field(default=None, max_length=128)


class _Token(_Wire):
    claims: SubjectTokenClaims
    signature: str = Field(max_length=1024)


def issue_subject_token(
    *,
    signer: TranslatorSigner,
    recipient: SealingPublicKey,
    client: str,
    service: str,
    provider: str,
    subject: SealedSubject,
    now: datetime,
    ttl: timedelta,
) -> str:
    """A token for ``client`` calling ``service`` of ``provider``, readable by ``provider`` only."""
    draft = SubjectTokenClaims(
        client=client,
        service=service,
        provider=provider,
        issued_at=now,
        expires_at=now + ttl,
        citizen=subject.citizen is not None,
        sealed="",
    )
    sealed = seal(
        recipient,
        canonical_json(subject.model_dump(mode="json")),
        aad=draft.associated_data(),
    )
    claims = draft.model_copy(update={"sealed": sealed})
    signature = signer.sign_detached(_signing_input(claims))
    token = _Token(claims=claims, signature=signature)
    return base64.urlsafe_b64encode(canonical_json(token.model_dump(mode="json"))).decode("ascii")


def _signing_input(claims: SubjectTokenClaims) -> bytes:
    return canonical_json({"domain": DOMAIN, **claims.model_dump(mode="json")})


def peek_subject_token(token: str) -> SubjectTokenClaims:
    """The claims, *unverified*: for a consumer's cache (when to ask again), never for trust."""
    return _parse(token).claims


def _parse(token: str) -> _Token:
    if len(token) > MAX_TOKEN_CHARS:
        raise VerificationError(_OPAQUE)
    try:
        return _Token.model_validate_json(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValidationError, ValueError, binascii.Error, UnicodeError) as exc:
        raise VerificationError(_OPAQUE) from exc


def open_subject_token(
    token: str,
    *,
    verifier: TranslatorVerifier,
    key: SealingKey,
    client: str,
    service: str,
    provider: str,
    now: datetime,
    max_skew_s: int,
) -> SealedSubject:
    """Steps (T1)–(T4); the sealed subject, or ``VerificationError`` (one opaque reason)."""
    claims, subject = _verify_and_open(token, verifier, key)  # (T1), (T4)
    _check_binding(claims, client, service, provider, now, max_skew_s)  # (T2), (T3)
    return subject


def _verify_and_open(
    token: str, verifier: TranslatorVerifier, key: SealingKey
) -> tuple[SubjectTokenClaims, SealedSubject]:
    try:
        parsed = _parse(token)
        claims = parsed.claims
        verifier.verify_detached(parsed.signature, _signing_input(claims))  # (T1)
        plain = key.open(claims.sealed, aad=claims.associated_data())  # (T4)
        subject = SealedSubject.model_validate_json(plain)
        if (subject.citizen is not None) != claims.citizen:
            raise VerificationError("sealed part disagrees with the claims")
        return claims, subject
    except (OnceOnlyError, ValidationError, ValueError) as exc:
        raise VerificationError(_OPAQUE) from exc


def _check_binding(
    claims: SubjectTokenClaims,
    client: str,
    service: str,
    provider: str,
    now: datetime,
    max_skew_s: int,
) -> None:
    # (T2) bound to this client, service and provider.
    bound = (claims.client, claims.service, claims.provider) == (client, service, provider)
    # (T3) current: not from the future (beyond the skew window), not expired.
    skew = timedelta(seconds=max_skew_s)
    fresh = claims.issued_at.tzinfo is not None and claims.issued_at <= now + skew
    if not bound or not fresh or claims.expires_at <= now:
        raise VerificationError(_OPAQUE)


class OpenedTokens:
    """A provider's memory of tokens it has verified and opened (T1, T4), by their exact text.

    The same bytes verify and open the same way every time, so a consumer reusing a cached token
    costs the provider only T2 and T3, which run on every use. Entries are keyed by the token and
    the translator key's id (a new key in the registry is a new entry), kept until the token
    expires, and dropped all at once when full."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._cache: dict[tuple[str, str], tuple[SubjectTokenClaims, SealedSubject]] = {}

    def open(
        self,
        token: str,
        *,
        verifier: TranslatorVerifier,
        key: SealingKey,
        client: str,
        service: str,
        provider: str,
        now: datetime,
        max_skew_s: int,
    ) -> SealedSubject:
        """As ``open_subject_token``, answering T1 and T4 from memory for a token seen before."""
        cache_key = (token, verifier.kid)
        hit = self._cache.get(cache_key)
        if hit is None:
            hit = _verify_and_open(token, verifier, key)  # (T1), (T4)
            if hit[0].provider == provider:  # only what this key was meant to open
                if len(self._cache) >= self._max:
                    self._cache.clear()
                self._cache[cache_key] = hit
        claims, subject = hit
        if claims.expires_at <= now:
            self._cache.pop(cache_key, None)
        _check_binding(claims, client, service, provider, now, max_skew_s)  # (T2), (T3)
        return subject
