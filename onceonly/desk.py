"""The one-stop desk and the procedure runner, each run on its own (``onceonly desk``,
``onceonly runner``; docs/operator.md "The one-stop desk and its runners").

Both open **only their own database** — the procedures tables (Alembic branch ``procedures``) —
and talk to everything else over HTTP:

* the **desk** serves the citizens' procedures API (``procedures.api``). It reads and changes
  registries through its own node (``/r1``, the one-stop subsystem's API key); consent requests go
  through the node too (``/platform/v1/consent-requests``, signed there), and the citizen's
  approvals and refusals go to the consent service's citizen API with the citizen's own token
  (``procedures.consent_desk.HttpConsentDesk``). It holds no private key.
* a **runner** carries out confirmed steps (``procedures.runner``): any number of runners may
  share one PostgreSQL database (claims with ``FOR UPDATE SKIP LOCKED`` and leases). It serves
  only ``/healthz``, ``/readyz`` and ``/metrics``. It signs the procedure's summary certificate
  with the one-stop subsystem's key, given as a file (docs/procedures.md "Who signs the
  certificate" says why it is not the node).

Settings come from the environment (``ONCEONLY_DESK_*``, ``ONCEONLY_RUNNER_*``); the API key from
the environment or a file, never a command-line argument (argument lists are visible to every
local user).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine

from adapters.reference.rights import ONE_STOP
from exchange.db import make_engine, upgrade
from exchange.errors import ConfigurationError
from exchange.settings import TokenIssuer
from exchange.signing import MemberSigner, load_private_key
from exchange.web.health import database_check, operations_router
from exchange.web.metrics import ComponentMetrics
from exchange.web.openapi import install_openapi
from exchange.web.problems import install_problem_handlers
from exchange.web.redirects import RelativeRedirects
from procedures.address_change import AddressChangeService
from procedures.api import build_router
from procedures.consent_desk import HttpConsentDesk
from procedures.one_stop import OneStopClient
from procedures.runner import LEASE_S, ProcedureRunner

__all__ = [
    "DeskSettings",
    "RunnerSettings",
    "create_desk_app",
    "create_runner_app",
    "load_desk_settings",
    "load_runner_settings",
]

PROCEDURES_BRANCH = ("procedures",)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class _OneStopSettings(BaseSettings):
    """What the desk and a runner share: their database and their node."""

    database_url: str = Field(min_length=1)
    """The procedures tables only (SQLite for one runner; PostgreSQL for several)."""
    node_url: str
    """The one-stop subsystem's own node."""
    client: str = str(ONE_STOP)
    """The subsystem the desk acts as (its API key is issued at the node for it)."""
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    """The API key: ``…_API_KEY`` or a file holding it (one is needed)."""
    host: str = "127.0.0.1"
    timeout_s: float = Field(default=15.0, gt=0, le=120)

    _check_node = field_validator("node_url")(_http_url)

    @property
    def key(self) -> str:
        if self.api_key is not None:
            value = self.api_key.get_secret_value().strip()
        elif self.api_key_file is not None:
            try:
                value = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ConfigurationError(f"cannot read the API key file ({exc.strerror})") from exc
        else:
            value = ""
        if not value:
            prefix = str(self.model_config.get("env_prefix", ""))
            raise ConfigurationError(f"set {prefix}API_KEY or {prefix}API_KEY_FILE")
        return value


class DeskSettings(_OneStopSettings, TokenIssuer):
    model_config = SettingsConfigDict(env_prefix="ONCEONLY_DESK_", extra="forbid")

    consent_url: str
    """Base URL of the consent service's citizen API (the central server), for decisions."""
    token_public_key_file: Path | None = None
    """The PEM public key of the citizens' token issuer (or ``OIDC_ISSUER``: the provider's)."""
    port: int = Field(default=8400, ge=1, le=65535)

    _check_consent = field_validator("consent_url")(_http_url)


class RunnerSettings(_OneStopSettings):
    model_config = SettingsConfigDict(env_prefix="ONCEONLY_RUNNER_", extra="forbid")

    signing_key_file: Path
    """The one-stop subsystem's private key: signs the summary certificates."""
    runner_id: str | None = Field(default=None, max_length=64)
    lease_s: float = Field(default=LEASE_S, gt=0.5, le=600)
    port: int = Field(default=8401, ge=1, le=65535)


def _load(kind: type[_OneStopSettings], overrides: dict[str, Any]) -> Any:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = kind(**given)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        prefix = kind.model_config.get("env_prefix", "")
        raise ConfigurationError(
            f"{prefix}* settings: {where}: {first.get('msg', 'invalid')}"
        ) from None
    settings.key  # noqa: B018 (fail at start, not at the first request)
    return settings


def load_desk_settings(**overrides: Any) -> DeskSettings:
    """From ``ONCEONLY_DESK_*`` with the non-``None`` ``overrides`` (CLI options) on top."""
    settings: DeskSettings = _load(DeskSettings, overrides)
    if settings.oidc_issuer is None and settings.token_public_key_file is None:
        raise ConfigurationError(
            "ONCEONLY_DESK_* settings: set ONCEONLY_DESK_OIDC_ISSUER (the citizens' OpenID "
            "Connect provider) or ONCEONLY_DESK_TOKEN_PUBLIC_KEY_FILE"
        )
    if settings.oidc_issuer is not None and settings.token_public_key_file is not None:
        raise ConfigurationError(
            "ONCEONLY_DESK_* settings: configure one token issuer, not OIDC_ISSUER and "
            "TOKEN_PUBLIC_KEY_FILE"
        )
    return settings


def load_runner_settings(**overrides: Any) -> RunnerSettings:
    """From ``ONCEONLY_RUNNER_*`` with the non-``None`` ``overrides`` (CLI options) on top."""
    settings: RunnerSettings = _load(RunnerSettings, overrides)
    return settings


def _procedures_engine(url: str) -> Engine:
    engine = make_engine(url)
    upgrade(engine, PROCEDURES_BRANCH)  # this component's own tables, nothing else
    return engine


def _app(title: str, lifespan: Callable[[FastAPI], Any], metrics: ComponentMetrics) -> FastAPI:
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    install_openapi(app)
    install_problem_handlers(
        app, on_database_unavailable=lambda: metrics.database_unavailable_at("request")
    )
    app.add_middleware(RelativeRedirects)
    return app


def create_desk_app(settings: DeskSettings) -> FastAPI:
    """The citizens' procedures API over the desk's node and the consent service."""
    verifier = settings.external_verifier(
        settings.token_public_key_file,
        timeout_s=settings.timeout_s,
        what="ONCEONLY_DESK_TOKEN_PUBLIC_KEY_FILE",
    )
    if verifier is None:
        raise ConfigurationError(
            "set ONCEONLY_DESK_OIDC_ISSUER or ONCEONLY_DESK_TOKEN_PUBLIC_KEY_FILE (the citizens' "
            "token issuer)"
        )
    engine = _procedures_engine(settings.database_url)
    client = OneStopClient(
        settings.node_url, settings.key, client_id=settings.client, timeout_s=settings.timeout_s
    )
    consents = HttpConsentDesk(
        settings.node_url, settings.key, settings.consent_url, timeout_s=settings.timeout_s
    )
    service = AddressChangeService(engine, client, consents)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()
            consents.close()
            engine.dispose()

    metrics = ComponentMetrics()
    app = _app("onceonly one-stop desk", lifespan, metrics)
    app.include_router(operations_router(metrics, {"database": database_check(engine)}))
    app.include_router(build_router(service, verifier, clock=lambda: datetime.now(UTC)))
    app.state.procedures = service
    return app


def create_runner_app(settings: RunnerSettings) -> FastAPI:
    """A procedure runner: carries out due steps until stopped; health and metrics only."""
    signer = MemberSigner(load_private_key(settings.signing_key_file))
    engine = _procedures_engine(settings.database_url)
    client = OneStopClient(
        settings.node_url, settings.key, client_id=settings.client, timeout_s=settings.timeout_s
    )
    runner = ProcedureRunner(
        engine, client, signer, runner_id=settings.runner_id, lease_s=settings.lease_s
    )
    stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(runner.run_forever(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()
            engine.dispose()

    metrics = ComponentMetrics([runner.metrics])
    app = _app("onceonly procedure runner", lifespan, metrics)
    app.include_router(
        operations_router(
            metrics,
            {"database": database_check(engine)},
            liveness=lambda: {"runner": runner.runner_id},
        )
    )
    app.state.runner = runner
    return app


def run_desk(*, host: str | None = None, port: int | None = None) -> None:
    """``onceonly desk``: load the settings, build the app, serve until stopped."""
    settings = load_desk_settings(host=host, port=port)
    _serve(create_desk_app(settings), settings.host, settings.port)


def run_runner(*, host: str | None = None, port: int | None = None) -> None:
    """``onceonly runner``: load the settings, build the runner, serve until stopped."""
    settings = load_runner_settings(host=host, port=port)
    _serve(create_runner_app(settings), settings.host, settings.port)


def _serve(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
