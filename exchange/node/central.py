"""The central server: serves the signed registry ("global configuration"), DESIGN "Trust".

``GET /registry`` answers the current signed document. It is re-signed when the registry's serial
changes (every ``onceonly registry …`` change bumps it) and when the cached copy has used half its
validity, so nodes refreshing every minute never hold an expired one while the central server is up.

``/healthz`` is liveness (no database), ``/readyz`` readiness (the database answers), ``/metrics``
the process, registry and database-unavailability metrics plus the collectors of the routers
served beside it (the consent service's). ``background`` jobs of those routers (the consent log's
checkpoint publisher) run while the app does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client import Counter
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from exchange.central_config import SignedRegistry, VerifiedRegistry
from exchange.db import make_engine, upgrade
from exchange.errors import ConfigurationError
from exchange.keystore import INIT_COMMAND, KeyStore
from exchange.node.app import database_url, utc_now
from exchange.registry_admin import REGISTRY_VALIDITY, RegistryAdmin
from exchange.settings import Settings
from exchange.signing import CentralSigner, load_private_key
from exchange.web.health import database_check, operations_router
from exchange.web.metrics import ComponentMetrics
from exchange.web.openapi import PUBLIC, documented, install_openapi, json_content
from exchange.web.problems import install_problem_handlers

__all__ = ["RegistryPublisher", "create_central_app"]

GET_REGISTRY = documented(
    "getRegistry",
    security=PUBLIC,
    problems=(503,),
    responses={
        200: {
            "description": "the signed registry; verify it with the central key (protocol §4)",
            "content": json_content(SignedRegistry),
        }
    },
)


class RegistryPublisher:
    """Signs the registry on demand and caches the signed bytes (thread-safe)."""

    def __init__(
        self,
        admin: RegistryAdmin,
        signer: CentralSigner,
        *,
        instance: str,
        ca_pem: str,
        central_url: str,
        on_signed: Callable[[], None] | None = None,
    ) -> None:
        self._admin = admin
        self._on_signed = on_signed
        self._signer = signer
        self._instance = instance
        self._ca_pem = ca_pem
        self._central_url = central_url
        self._lock = threading.Lock()
        self._cached: SignedRegistry | None = None
        self._cached_bytes = b""
        self._verified: VerifiedRegistry | None = None

    @property
    def cached_serial(self) -> int | None:
        """The serial of the document last signed, without asking the database."""
        with self._lock:
            return self._cached.document.serial if self._cached else None

    def verified(self, now: datetime) -> VerifiedRegistry:
        """The central server's own view (its own document: nothing to verify against)."""
        self.current(now)
        with self._lock:
            assert self._cached is not None
            if self._verified is None or self._verified.document is not self._cached.document:
                self._verified = VerifiedRegistry(self._cached.document)
            return self._verified

    def current(self, now: datetime) -> bytes:
        serial = self._admin.serial()
        with self._lock:
            doc = self._cached.document if self._cached else None
            stale = (
                doc is None
                or doc.serial != max(1, serial)
                or now >= doc.issued_at + REGISTRY_VALIDITY / 2
            )
            if stale:
                self._cached = self._admin.publish(
                    self._signer,
                    instance=self._instance,
                    ca_pem=self._ca_pem,
                    central_url=self._central_url,
                    now=now,
                )
                self._cached_bytes = self._cached.to_bytes()
                if self._on_signed is not None:
                    self._on_signed()
            return self._cached_bytes


def create_central_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    routers: Callable[[Callable[[datetime], VerifiedRegistry]], Sequence[APIRouter]] | None = None,
    collectors: Sequence[Collector] = (),
    clock: Callable[[], datetime] = utc_now,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> FastAPI:
    keys = KeyStore(settings.data_dir)
    instance = keys.instance()
    try:
        ca_pem = keys.require(keys.ca_cert, "instance CA", INIT_COMMAND).read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the instance CA {keys.ca_cert}") from exc
    signer = CentralSigner(
        load_private_key(keys.require(keys.central_key, "central signing key", INIT_COMMAND))
    )
    engine = engine or make_engine(database_url(settings, "central"))
    upgrade(engine, ("exchange",))  # the kernel migrates its own tables; the wiring adds others
    metrics = ComponentMetrics(collectors)
    served = Counter(
        "onceonly_central_registry_served_total",
        "Signed registry documents served to nodes",
        registry=metrics.registry,
    )
    signed = Counter(
        "onceonly_central_registry_signed_total",
        "Times the registry was signed (serial changed or half its validity used)",
        registry=metrics.registry,
    )
    publisher = RegistryPublisher(
        RegistryAdmin(engine),
        signer,
        instance=instance,
        ca_pem=ca_pem,
        central_url=settings.central_url,
        on_signed=signed.inc,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(job()) for job in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(title="onceonly central server", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_openapi(app)
    install_problem_handlers(
        app, on_database_unavailable=lambda: metrics.database_unavailable_at("request")
    )
    app.state.engine = engine

    @app.get("/registry", **GET_REGISTRY)
    async def registry() -> Response:
        body = await asyncio.to_thread(publisher.current, clock())
        served.inc()
        return Response(body, media_type="application/json", headers={"cache-control": "no-store"})

    app.include_router(
        operations_router(
            metrics,
            {"database": database_check(engine)},
            liveness=lambda: {"instance": instance, "registry_serial": publisher.cached_serial},
        )
    )

    for router in routers(publisher.verified) if routers else ():
        app.include_router(router)
    return app
