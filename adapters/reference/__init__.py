"""Reference registries of Machida city (東京都町田市): schemas and SQL adapter configurations."""

from adapters.reference.registries import (
    ELECTRICITY_MEMBER,
    GAS_MEMBER,
    LAND_REGISTRY_MEMBER,
    MACHIDA_LG_CODE,
    MACHIDA_MEMBER,
    REFERENCE_REGISTRIES,
    ReferenceRegistry,
    registry,
)
from adapters.reference.schema import REGISTRY_TABLES, create_registry_schema

__all__ = [
    "ELECTRICITY_MEMBER",
    "GAS_MEMBER",
    "LAND_REGISTRY_MEMBER",
    "MACHIDA_LG_CODE",
    "MACHIDA_MEMBER",
    "REFERENCE_REGISTRIES",
    "REGISTRY_TABLES",
    "ReferenceRegistry",
    "create_registry_schema",
    "registry",
]
