"""The composition root: which implementation sits behind each port (DESIGN "The parts").

The only place besides the CLI that imports ``adapters``, ``policies``, ``consent`` and ``audit``.
A node gets the registry adapters of the reference registries it hosts (each over its own
database), the pseudonym service, the policy engine fed from the verified registry, the consent
gate and the audit log; the central server gets the registry routes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import Engine

from adapters.pseudonyms import PseudonymService
from adapters.reference.registries import REFERENCE_REGISTRIES
from exchange.db import make_engine, upgrade
from exchange.identifiers import ClientId, MemberId
from exchange.keystore import KeyStore
from exchange.node.app import NodeParts
from exchange.ports import CITIZEN_AGENCY, RegistryAdapter
from exchange.settings import Settings

__all__ = [
    "PSEUDONYM_AGENCIES",
    "build_node_parts",
    "pseudonym_service",
    "registry_database_url",
]

PSEUDONYMS = "pseudonyms"
PSEUDONYM_AGENCIES: tuple[str, ...] = (
    CITIZEN_AGENCY,
    *(r.client_id for r in REFERENCE_REGISTRIES),
)


def registry_database_url(settings: Settings, name: str) -> str:
    """A reference registry's own database (or the pseudonym store): one SQLite file each, or
    the configured PostgreSQL database (their table names are distinct)."""
    if settings.database_url:
        return settings.database_url
    path: Path = (settings.data_dir / "registries" / f"{name}.sqlite").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def pseudonym_service(settings: Settings, engine: Engine | None = None) -> PseudonymService:
    engine = engine or make_engine(registry_database_url(settings, PSEUDONYMS))
    upgrade(engine)
    return PseudonymService(engine, PSEUDONYM_AGENCIES)


def build_node_parts(settings: Settings, member: MemberId) -> NodeParts:
    keys = KeyStore(settings.data_dir)
    hosted = set(keys.hosted_subsystems(member))
    adapters: dict[ClientId, RegistryAdapter] = {}
    for reg in REFERENCE_REGISTRIES:
        client = ClientId.parse(reg.client_id)
        if client in hosted:
            adapters[client] = reg.adapter(registry_database_url(settings, reg.subsystem))
    return NodeParts(adapters=adapters, subjects=pseudonym_service(settings))


def build_central_routers(settings: Settings) -> list[APIRouter]:
    """Routes the central server hosts besides the registry (consent service, pseudonyms)."""
    return []
