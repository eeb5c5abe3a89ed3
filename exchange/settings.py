"""One ``Settings`` object for every component (style rule 16).

Read from the environment with the prefix ``ONCEONLY_`` (and the conventional ``DATABASE_URL``),
built in the CLI / ``create_app(settings)``, never at import time. Trust assumption: the operator
controls the environment; nothing here is secret except what is typed ``SecretStr``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
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

    policy_engine: Literal["embedded", "opa"] = "embedded"
    opa_url: str | None = None
    opa_timeout_s: float = 0.5

    jwt_issuer: str = "onceonly-dev"
    jwt_audience: str = "onceonly"
    jwt_public_key_file: Path | None = None
    """PEM public key of the citizens'/auditors' token issuer; unset means the development
    issuer's key in ``data_dir`` (created by ``onceonly keys dev-issuer``, never at start)."""

    portal_secret: SecretStr | None = None
    """Signs portal session cookies and CSRF tokens; unset means a random one per run."""

    registries_file: Path | None = None
    """The registries a node serves, declared (TOML, docs/adapters.md); unset means
    ``registries.toml`` in ``data_dir`` if there is one, else none (a consumer-only node)."""

    checkpoint_interval_s: float = 30.0

    pseudonyms: Literal["translator", "local"] = "translator"
    """How nodes learn the provider agency's code for a citizen (docs/pseudonyms.md):
    ``translator`` asks the central pseudonym translator, which seals the provider's code to the
    provider (no node holds another agency's codes); ``local`` translates through one shared
    table every node can read — for comparison and benchmarks only, not for production."""
