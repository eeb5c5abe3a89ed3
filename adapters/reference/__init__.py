"""Reference registries of Machida city (東京都町田市): their declaration (``machida.toml``) and
the departments' table schemas."""

from adapters.reference.registries import (
    ELECTRICITY_MEMBER,
    GAS_MEMBER,
    LAND_REGISTRY_MEMBER,
    MACHIDA_LG_CODE,
    MACHIDA_MEMBER,
    REFERENCE_FILE,
    reference_config,
    reference_registries,
    registry,
)
from adapters.reference.schema import REGISTRY_TABLES, create_registry_schema

__all__ = [
    "ELECTRICITY_MEMBER",
    "GAS_MEMBER",
    "LAND_REGISTRY_MEMBER",
    "MACHIDA_LG_CODE",
    "MACHIDA_MEMBER",
    "REFERENCE_FILE",
    "REGISTRY_TABLES",
    "create_registry_schema",
    "reference_config",
    "reference_registries",
    "registry",
]
