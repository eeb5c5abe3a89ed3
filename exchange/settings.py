"""One ``Settings`` object for every component (style rule 16).

Read from the environment with the prefix ``ONCEONLY_`` (and the conventional ``DATABASE_URL``),
built in the CLI / ``create_app(settings)``, never at import time. Trust assumption: the operator
controls the environment; nothing here is secret except what is typed ``SecretStr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from exchange.errors import ConfigurationError
from exchange.oidc import JwksKeys
from exchange.tokens import ClaimMapping, StaticKey, TokenVerifier

__all__ = ["Settings", "TokenIssuer"]


class TokenIssuer(BaseModel):
    """Where citizens' and auditors' tokens come from, and how their claims are read: the
    fields every component that verifies those tokens shares (``Settings``, the one-stop desk's
    and the portal's settings). Trust assumption: the operator names the issuer; its keys are
    fetched from it (``oidc_issuer``) or pinned in a file.
    """

    jwt_issuer: str = "onceonly-dev"
    """The ``iss`` of citizens' and auditors' tokens (with ``oidc_issuer``, that one instead)."""
    jwt_audience: str = "onceonly"
    """The ``aud`` the services accept: the API's resource identifier at the provider."""
    oidc_issuer: str | None = None
    """An OpenID Connect provider's issuer URL: tokens are verified with the keys of its JWKS
    (``jwks_uri`` of its discovery document), refetched when a token names an unknown key."""
    jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256"])
    """The algorithms pinned for ``oidc_issuer``'s tokens (a ``PEM`` key is always EdDSA)."""
    jwt_typ: str | None = "at+jwt"
    """The ``typ`` header the provider's access tokens carry (RFC 9068); empty: not checked."""
    jwt_citizen_claim: str | None = None
    """The claim holding the citizen id (unset: ``sub`` is the citizen id)."""
    jwt_roles_claim: str = "roles"
    jwt_role_map: dict[str, str] = Field(default_factory=dict)
    """The provider's role values to onceonly's roles (``{"onceonly-auditor": "auditor"}``)."""
    jwks_min_refetch_s: float = Field(default=10.0, ge=1, le=3600)
    """An unknown ``kid`` refetches the provider's keys at most once per this interval."""

    def claim_mapping(self) -> ClaimMapping:
        return ClaimMapping(
            citizen_claim=self.jwt_citizen_claim or None,
            roles_claim=self.jwt_roles_claim,
            role_map=self.jwt_role_map,
        )

    def external_verifier(
        self, public_key_file: Path | None, *, timeout_s: float, what: str
    ) -> TokenVerifier | None:
        """The verifier of the provider (``oidc_issuer``) or of the pinned key in
        ``public_key_file`` (``what`` names that setting); both is an error, neither ``None``."""
        if self.oidc_issuer is not None and public_key_file is not None:
            raise ConfigurationError(f"configure one token issuer, not OIDC_ISSUER and {what}")
        if self.oidc_issuer is not None:
            keys = JwksKeys.from_issuer(
                self.oidc_issuer, timeout_s=timeout_s, min_refetch_s=self.jwks_min_refetch_s
            )
            return TokenVerifier(
                keys,
                issuer=self.oidc_issuer,
                audience=self.jwt_audience,
                algorithms=self.jwt_algorithms,
                token_type=self.jwt_typ or None,
                claims=self.claim_mapping(),
            )
        if public_key_file is None:
            return None
        try:
            pem = public_key_file.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {what} {public_key_file}") from exc
        return TokenVerifier(
            StaticKey(pem),
            issuer=self.jwt_issuer,
            audience=self.jwt_audience,
            claims=self.claim_mapping(),
        )


class Settings(BaseSettings, TokenIssuer):
    model_config = SettingsConfigDict(env_prefix="ONCEONLY_", extra="ignore")

    data_dir: Path = Path(".onceonly")
    """Keys, certificates, the trust anchor, cached registry and SQLite files live here."""

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ONCEONLY_DATABASE_URL", "DATABASE_URL")
    )
    """PostgreSQL (``postgresql://…``) for real deployments; unset means one SQLite file per
    component in ``data_dir``."""

    central_url: str = "http://127.0.0.1:8100"
    registry_refresh_s: float = 60.0
    max_clock_skew_s: int = 60
    exchange_timeout_s: float = 10.0
    db_work: Literal["auto", "inline", "threads"] = "auto"
    """Where a node runs its blocking database work: ``auto`` runs SQLite work on the event loop
    and PostgreSQL work in worker threads; ``inline`` runs both on the loop (measured +43 %
    exchanges/s with a PostgreSQL server on the same host, docs/performance.md; a slow or
    locked database then stalls the whole node); ``threads`` always uses threads."""

    policy_engine: Literal["auto", "embedded", "opa-inprocess", "regopy", "opa-server", "opa"] = (
        "auto"
    )
    """Which engine decides exchanges (docs/policies.md "Engines"): ``auto`` (``embedded`` is its
    older name) takes OPA's evaluator in-process where it loads, else rego-cpp (``regopy``);
    ``opa-inprocess`` or ``regopy`` forces one; ``opa-server`` (or ``opa``) asks ``opa_url``."""
    opa_url: str | None = None
    opa_timeout_s: float = 0.5

    jwt_public_key_file: Path | None = None
    """One pinned Ed25519 PEM public key of the token issuer (EdDSA tokens)."""
    allow_dev_issuer: bool = False
    """Trust the development issuer's key in ``data_dir`` when no other issuer is configured.
    Only the demo (``onceonly demo``/``serve``) or this explicit flag enables it."""

    portal_secret: SecretStr | None = None
    """Signs portal session cookies and CSRF tokens; unset means a random one per run."""

    registries_file: Path | None = None
    """The registries a node serves, declared (TOML, docs/adapters.md); unset means
    ``registries.toml`` in ``data_dir`` if there is one, else none (a consumer-only node)."""

    checkpoint_interval_s: float = 30.0

    alerts_interval_s: float = 5.0
    """How often a node evaluates the alert rules on its new log entries (docs/alerts.md)."""
    alerts_policy_file: Path | None = None
    """The alert rules' data (JSON: ``max_reads_per_window``, ``window_s``,
    ``public_member_classes``); unset means the defaults (docs/alerts.md)."""
    smtp_host: str | None = None
    """The SMTP server alerts are e-mailed through; unset means no e-mail (inbox only)."""
    smtp_port: int = 25
    smtp_from: str = "onceonly-alerts@localhost"
    smtp_starttls: bool = False
    smtp_credentials_file: Path | None = None
    """A file: the SMTP user on its first line, the password on its second (never a flag)."""

    pseudonyms: Literal["translator", "local"] = "translator"
    """How nodes learn the provider agency's code for a citizen (docs/pseudonyms.md):
    ``translator`` asks the central pseudonym translator, which seals the provider's code to the
    provider (no node holds another agency's codes); ``local`` translates through one shared
    table every node can read — for comparison and benchmarks only, not for production."""

    consent_cache_ttl_s: float = Field(default=30.0, ge=0, le=3600)
    """How long a provider node keeps a consent check's answer (0: no cache). A status push from
    the consent service drops an entry at once; the TTL bounds how stale one can be when pushes
    are lost (docs/consent.md "Status push and the provider's cache")."""
    event_pull_interval_s: float = Field(default=30.0, gt=0, le=3600)
    """How often a node pulls the events it may have missed ("events since cursor")."""
    event_retry_max_s: float = Field(default=300.0, gt=0, le=86400)
    """The longest wait between two delivery attempts of an event (exponential backoff)."""
    event_retention_days: int = Field(default=90, ge=1, le=3650)
    """How long a delivered event stays in its sender's outbox, for catch-up pulls; then pruned
    (docs/protocol.md §8, "Retention")."""
