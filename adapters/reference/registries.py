"""The reference registries of Machida city (東京都町田市, LG code 132098), as a declaration.

The eight registries are declared in ``machida.toml`` beside this module, in the same format as
any operator's registries file (``adapters.config``, docs/adapters.md): nothing about them is wired
in code. Each is one subsystem of one member, with its own database (tables in ``schema``, data
from ``adapters.seed``) and its own subject identifier (a per-agency pseudonym). Members:

- Machida city's departments: ``JP/GOV/132098/<subsystem>``;
- the land registry: the Legal Affairs Bureau, ``JP/GOV/000001/land-registry`` (code fictional);
- private utilities (fictional companies): 町田電力 ``JP/COM/9000000000001/electricity`` and
  多摩ガス ``JP/COM/9000000000002/gas``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from adapters.config import RegistriesConfig, SqlRegistry, load_registries

__all__ = [
    "ELECTRICITY_MEMBER",
    "GAS_MEMBER",
    "LAND_REGISTRY_MEMBER",
    "MACHIDA_LG_CODE",
    "MACHIDA_MEMBER",
    "REFERENCE_FILE",
    "reference_config",
    "reference_registries",
    "registry",
]

MACHIDA_LG_CODE = "132098"
MACHIDA_MEMBER = f"JP/GOV/{MACHIDA_LG_CODE}"
LAND_REGISTRY_MEMBER = "JP/GOV/000001"
ELECTRICITY_MEMBER = "JP/COM/9000000000001"
GAS_MEMBER = "JP/COM/9000000000002"

REFERENCE_FILE = Path(__file__).with_name("machida.toml")
"""The shipped declaration of the reference registries."""


@functools.cache
def reference_config() -> RegistriesConfig:
    """The reference declaration, read and validated once (at first use, not at import)."""
    return load_registries(REFERENCE_FILE)


def reference_registries() -> tuple[SqlRegistry, ...]:
    """The eight reference registries, in declaration order (the seed's order)."""
    out = tuple(r for r in reference_config().registries if isinstance(r, SqlRegistry))
    assert len(out) == len(reference_config().registries)  # the reference is all SQL
    return out


def registry(subsystem: str) -> SqlRegistry:
    """The reference registry named ``subsystem`` (``KeyError`` when there is none)."""
    for r in reference_registries():
        if r.subsystem == subsystem:
            return r
    raise KeyError(subsystem)
