"""The bridge from a node to a registry (DESIGN "The parts", issue 6).

- ``adapters.base``: the adapter model (``ServiceSpec``), upstream error types, ``openapi_for``;
- ``adapters.sql``: ``SqlAdapter``, services from a department's own database by configuration;
- ``adapters.http``: ``HttpAdapter``, forwarding to a departmental REST system;
- ``adapters.pseudonyms``: ``PseudonymService``, per-agency subject identifiers (機関別符号);
- ``adapters.translator``: ``PseudonymTranslator``, the central translator that seals the
  provider's code to the provider; ``adapters.translator_client``: ``HttpSubjectSealer``, a
  consumer node's client of it (docs/pseudonyms.md);
- ``adapters.config``: the registries file (``load_registries``): what a node serves, declared;
- ``adapters.factory``: ``build_adapters`` from a declaration, ``declared_services`` for the registry;
- ``adapters.reference``: Machida city's reference registries (``machida.toml``);
  ``adapters.seed``: their data.
"""

from adapters.base import (
    ServiceSpec,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    openapi_for,
)
from adapters.config import (
    HttpRegistry,
    RegistriesConfig,
    SqlRegistry,
    load_registries,
    parse_registries,
)
from adapters.factory import build_adapters, declared_services
from adapters.http import HttpAdapter, HttpRoute
from adapters.pseudonyms import PseudonymService
from adapters.reference import create_registry_schema, reference_config, reference_registries
from adapters.seed import SeedReport, seed
from adapters.sql import ColumnField, SqlAdapter, SqlServiceConfig, SqlUpdate
from adapters.translator import PseudonymTranslator
from adapters.translator_client import HttpSubjectSealer

__all__ = [
    "ColumnField",
    "HttpAdapter",
    "HttpRegistry",
    "HttpRoute",
    "HttpSubjectSealer",
    "PseudonymService",
    "PseudonymTranslator",
    "RegistriesConfig",
    "SeedReport",
    "ServiceSpec",
    "SqlAdapter",
    "SqlRegistry",
    "SqlServiceConfig",
    "SqlUpdate",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "build_adapters",
    "create_registry_schema",
    "declared_services",
    "load_registries",
    "openapi_for",
    "parse_registries",
    "reference_config",
    "reference_registries",
    "seed",
]
