"""The bridge from a node to a registry (DESIGN "The parts", issue 6).

- ``adapters.base``: the adapter model (``ServiceSpec``), upstream error types, ``openapi_for``;
- ``adapters.sql``: ``SqlAdapter``, services from a department's own database by configuration;
- ``adapters.http``: ``HttpAdapter``, forwarding to a departmental REST system;
- ``adapters.pseudonyms``: ``PseudonymService``, per-agency subject identifiers (機関別符号);
- ``adapters.translator``: ``PseudonymTranslator``, the central translator that seals the
  provider's code to the provider; ``adapters.translator_client``: ``HttpSubjectSealer``, a
  consumer node's client of it (docs/pseudonyms.md);
- ``adapters.reference``: Machida city's reference registries; ``adapters.seed``: their data.
"""

from adapters.base import (
    ServiceSpec,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    openapi_for,
)
from adapters.http import HttpAdapter, HttpRoute
from adapters.pseudonyms import PseudonymService
from adapters.reference import REFERENCE_REGISTRIES, ReferenceRegistry, create_registry_schema
from adapters.seed import SeedReport, seed
from adapters.sql import ColumnField, SqlAdapter, SqlServiceConfig, SqlUpdate
from adapters.translator import PseudonymTranslator
from adapters.translator_client import HttpSubjectSealer

__all__ = [
    "REFERENCE_REGISTRIES",
    "ColumnField",
    "HttpAdapter",
    "HttpRoute",
    "HttpSubjectSealer",
    "PseudonymService",
    "PseudonymTranslator",
    "ReferenceRegistry",
    "SeedReport",
    "ServiceSpec",
    "SqlAdapter",
    "SqlServiceConfig",
    "SqlUpdate",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "create_registry_schema",
    "openapi_for",
    "seed",
]
