"""One decision table (tests/policies/decisions.json) through every engine: embedded rego-cpp,
OpaServerEngine against the OPA-REST-compatible test server, and a real OPA when OPA_URL is set."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies.embedded import EmbeddedRegoEngine
from policies.opa_server import OpaServerEngine

from .opa_rest_server import OpaRestServer

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads((Path(__file__).parent / "decisions.json").read_text(encoding="utf-8"))
DATA = json.loads((ROOT / TABLE["data_file"]).read_text(encoding="utf-8"))
CASES = [pytest.param(c["input"], c["expect"], id=c["name"]) for c in TABLE["cases"]]


@pytest.fixture(scope="module")
def embedded() -> EmbeddedRegoEngine:
    return EmbeddedRegoEngine(DATA)


@pytest.fixture(scope="module")
def opa_via_test_server() -> Iterator[OpaServerEngine]:
    with OpaRestServer() as server:
        engine = OpaServerEngine(server.url, timeout_s=10.0)
        engine.upload_policies()
        engine.load_data(DATA)
        yield engine
        engine.close()


@pytest.fixture(scope="module")
def real_opa() -> Iterator[OpaServerEngine]:
    url = os.environ.get("OPA_URL")
    if not url:
        pytest.skip("no OPA here: set OPA_URL=http://host:8181 to run the table against a real OPA")
    engine = OpaServerEngine(url, timeout_s=5.0)
    engine.upload_policies()
    engine.load_data(DATA)
    yield engine
    engine.close()


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_embedded_engine_gives_the_tabled_decision(
    embedded: EmbeddedRegoEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert embedded.evaluate(input_doc) == expect


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_opa_client_path_gives_the_tabled_decision(
    opa_via_test_server: OpaServerEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert opa_via_test_server.evaluate(input_doc) == expect


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_real_opa_gives_the_tabled_decision(
    real_opa: OpaServerEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert real_opa.evaluate(input_doc) == expect


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_opa_denies_within_the_timeout() -> None:
    from datetime import UTC, datetime

    from exchange.identifiers import ClientId, ServiceId
    from exchange.ports import PolicyInput

    engine = OpaServerEngine(f"http://127.0.0.1:{_closed_port()}", timeout_s=0.3)
    request = PolicyInput(
        client=ClientId.parse("JP/GOV/132098/tax"),
        service=ServiceId.parse("JP/GOV/132098/resident-registry/address"),
        purpose="tax-assessment",
        subject=None,
        now=datetime(2026, 11, 23, 11, 40, tzinfo=UTC),
    )
    start = time.monotonic()
    decision = engine.decide(request)
    assert time.monotonic() - start < 0.6
    assert not decision
    assert decision.reasons == ("policy engine unavailable",)
    assert decision.fields == frozenset()
