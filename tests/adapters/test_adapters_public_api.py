"""The adapters package exports exactly its public names (style rule 3)."""

from __future__ import annotations

import adapters
import adapters.reference


def test_adapters_exports_its_public_names() -> None:
    assert sorted(adapters.__all__) == sorted(
        [
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
    )
    for name in adapters.__all__:
        assert getattr(adapters, name) is not None


def test_reference_registries_have_stable_distinct_ids() -> None:
    ids = [r.client_id for r in adapters.reference_registries()]
    assert len(set(ids)) == len(ids) == 8
    assert "JP/GOV/132098/resident-registry" in ids
    assert "JP/GOV/000001/land-registry" in ids
    assert all(i.startswith("JP/COM/") for i in ids if i.endswith(("/electricity", "/gas")))
    for name in adapters.reference.__all__:
        assert getattr(adapters.reference, name) is not None
