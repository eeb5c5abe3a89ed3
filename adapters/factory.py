"""Adapters from a registries declaration (``adapters.config``): what a node plugs into its
``RegistryAdapter`` port, and what the central registry lists for each declared service.

``build_adapters`` makes one ``SqlAdapter`` or ``HttpAdapter`` per declared registry, resolving
secrets and per-deployment values from the environment at start (a DSN in ``dsn_env``, an
upstream's base URL in ``base_url_env``, upstream credentials in ``bearer_token_env`` and
``header_env``); a missing variable is a ``ConfigurationError`` naming
the registry and the variable, never a value. ``declared_services`` gives each service's id,
description and OpenAPI document; ``register_services`` enters them in the central registry
(``onceonly registry add-services --from``, and the reference provisioning).

Trust assumption: the declaration was validated by ``adapters.config``; the environment is the
operator's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from adapters.config import BASE_URL_PATTERN, HttpRegistry, RegistriesConfig, SqlRegistry
from adapters.http import HttpAdapter, HttpRoute
from adapters.sql import SqlAdapter
from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, ServiceId
from exchange.openapi import openapi_document
from exchange.ports import RegistryAdapter, ServiceDescription
from exchange.registry_admin import RegistryAdmin

__all__ = [
    "DeclaredService",
    "build_adapters",
    "declared_services",
    "register_services",
    "resolve_base_url",
    "resolve_dsn",
]

DeclaredService = tuple[ServiceId, ServiceDescription, dict[str, Any]]
"""A declared service: its id, its description, its OpenAPI document."""


def _env(env: Mapping[str, str], name: str, registry: str, key: str) -> str:
    value = env.get(name)
    if not value:
        raise ConfigurationError(f"registry {registry}: {key} names {name}, which is not set")
    return value


def resolve_dsn(
    decl: SqlRegistry,
    *,
    default_dsn: Callable[[str], str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The database URL of an SQL registry: ``dsn``, ``$dsn_env``, or the node's default."""
    if decl.dsn is not None:
        return decl.dsn
    if decl.dsn_env is not None:
        return _env(os.environ if env is None else env, decl.dsn_env, decl.id, "dsn_env")
    if default_dsn is None:
        raise ConfigurationError(f"registry {decl.id}: no dsn or dsn_env, and no default database")
    return default_dsn(decl.subsystem)


def resolve_base_url(decl: HttpRegistry, *, env: Mapping[str, str] | None = None) -> str:
    """The upstream base URL of an HTTP registry: ``base_url``, or ``$base_url_env`` (which must
    look like one: a ``ConfigurationError`` names the variable, never its value)."""
    if decl.base_url is not None:
        return decl.base_url
    name = decl.base_url_env
    if name is None:  # adapters.config accepts no declaration without one of the two
        raise ConfigurationError(f"registry {decl.id}: no base_url and no base_url_env")
    value = _env(os.environ if env is None else env, name, decl.id, "base_url_env")
    if not re.match(BASE_URL_PATTERN, value):
        raise ConfigurationError(
            f"registry {decl.id}: base_url_env names {name}, which is not an http(s) base URL"
        )
    return value


def _http_adapter(decl: HttpRegistry, env: Mapping[str, str]) -> HttpAdapter:
    headers = dict(decl.headers)
    for header, name in decl.header_env.items():
        headers[header] = _env(env, name, decl.id, f"header_env.{header}")
    if decl.bearer_token_env is not None:
        token = _env(env, decl.bearer_token_env, decl.id, "bearer_token_env")
        headers["Authorization"] = f"Bearer {token}"
    return HttpAdapter(
        resolve_base_url(decl, env=env),
        [HttpRoute(s.spec(), s.method, s.path) for s in decl.services],
        timeout_s=decl.timeout_s,
        max_attempts=decl.max_attempts,
        backoff_s=decl.backoff_s,
        headers=headers,
    )


def build_adapters(
    config: RegistriesConfig,
    clients: Iterable[ClientId] | None = None,
    *,
    default_dsn: Callable[[str], str] | None = None,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    db_work: str = "auto",
) -> dict[ClientId, RegistryAdapter]:
    """One adapter per declared registry (only those in ``clients``, when given).

    On a fault, the adapters already made are not leaked: their engines are disposed of."""
    env = os.environ if env is None else env
    wanted = None if clients is None else set(clients)
    out: dict[ClientId, RegistryAdapter] = {}
    try:
        for decl in config.registries:
            if wanted is not None and decl.client not in wanted:
                continue
            if isinstance(decl, SqlRegistry):
                dsn = resolve_dsn(decl, default_dsn=default_dsn, env=env)
                out[decl.client] = decl.adapter(dsn, clock=clock, db_work=db_work)
            else:
                out[decl.client] = _http_adapter(decl, env)
    except BaseException:
        for adapter in out.values():
            if isinstance(adapter, SqlAdapter):
                adapter.engine.dispose()
        raise
    return out


def declared_services(config: RegistriesConfig) -> list[DeclaredService]:
    """Every declared service with its description and OpenAPI document (for the registry)."""
    out: list[DeclaredService] = []
    for decl in config.registries:
        descriptions = [spec.describe() for spec in decl.specs()]
        for desc in (*descriptions, *decl.event_descriptions()):
            sid = ServiceId(decl.client, desc.code, desc.version)
            out.append((sid, desc, openapi_document(str(sid), [(str(sid), desc)])))
    return out


def register_services(admin: RegistryAdmin, config: RegistriesConfig) -> list[ServiceId]:
    """Enter (or update) every declared service in the central registry, with its OpenAPI.

    The subsystems must be registered already (``NotFoundError`` otherwise)."""
    out: list[ServiceId] = []
    for sid, desc, openapi in declared_services(config):
        admin.add_service(
            sid,
            description=desc.description,
            fields=desc.fields,
            purposes=desc.purposes,
            changes=desc.changes,
            openapi=openapi,
            event_of=desc.event_of,
        )
        out.append(sid)
    return out
