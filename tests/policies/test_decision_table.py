"""One decision table (tests/policies/decisions.json) through every engine there is here.

The backends: OPA's own Go evaluator in-process (``OpaInProcessEngine``), rego-cpp in-process
(``EmbeddedRegoEngine``), ``OpaServerEngine`` through ``opa-python-client`` against the
OPA-REST-compatible test server (answering with rego-cpp, and with OPA's evaluator), and a real
OPA server when ``OPA_URL`` is set. Each backend must give the tabled decision on every row, and
``test_every_backend_here_gives_identical_decisions_on_every_row`` compares them with each other
row by row. A backend that is not installed here skips and says why.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.identifiers import ClientId, ServiceId
from exchange.ports import PolicyInput
from policies._internal.opa import unavailable_reason
from policies.embedded import EmbeddedRegoEngine
from policies.inprocess import InProcessEngine, OpaInProcessEngine
from policies.opa_server import OpaServerEngine

from .opa_rest_server import Evaluator, OpaRestServer

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads((Path(__file__).parent / "decisions.json").read_text(encoding="utf-8"))
DATA = json.loads((ROOT / TABLE["data_file"]).read_text(encoding="utf-8"))
CASES = [pytest.param(c["input"], c["expect"], id=c["name"]) for c in TABLE["cases"]]
OPA_MISSING = unavailable_reason()
needs_opa = pytest.mark.skipif(
    OPA_MISSING is not None, reason=f"OPA's evaluator cannot run in-process: {OPA_MISSING}"
)

Evaluate = Callable[[dict[str, Any]], Mapping[str, Any] | None]


def _server_engine(evaluator: Evaluator) -> Iterator[OpaServerEngine]:
    with OpaRestServer(evaluator=evaluator) as server:
        engine = OpaServerEngine(server.url, timeout_s=10.0)
        engine.upload_policies()
        engine.load_data(DATA)
        yield engine
        engine.close()


@pytest.fixture(scope="module")
def regopy() -> EmbeddedRegoEngine:
    return EmbeddedRegoEngine(DATA, cache=False)


@pytest.fixture(scope="module")
def opa_inprocess() -> OpaInProcessEngine:
    if OPA_MISSING is not None:
        pytest.skip(f"OPA's evaluator cannot run in-process: {OPA_MISSING}")
    return OpaInProcessEngine(DATA, cache=False)


@pytest.fixture(scope="module")
def rest_regopy() -> Iterator[OpaServerEngine]:
    yield from _server_engine("regopy")


@pytest.fixture(scope="module")
def rest_opa() -> Iterator[OpaServerEngine]:
    if OPA_MISSING is not None:
        pytest.skip(f"OPA's evaluator cannot run in-process: {OPA_MISSING}")
    yield from _server_engine("opa")


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
def test_regopy_gives_the_tabled_decision(
    regopy: EmbeddedRegoEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert regopy.evaluate(input_doc) == expect


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_opa_inprocess_gives_the_tabled_decision(
    opa_inprocess: OpaInProcessEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert opa_inprocess.evaluate(input_doc) == expect


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_opa_client_path_gives_the_tabled_decision(
    rest_regopy: OpaServerEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert rest_regopy.evaluate(input_doc) == expect


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_opa_client_path_on_opas_evaluator_gives_the_tabled_decision(
    rest_opa: OpaServerEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert rest_opa.evaluate(input_doc) == expect


@pytest.mark.parametrize(("input_doc", "expect"), CASES)
def test_real_opa_gives_the_tabled_decision(
    real_opa: OpaServerEngine, input_doc: dict[str, Any], expect: dict[str, Any]
) -> None:
    assert real_opa.evaluate(input_doc) == expect


@needs_opa
def test_every_backend_here_gives_identical_decisions_on_every_row(
    request: pytest.FixtureRequest,
) -> None:
    """The whole table through every backend available here, compared row by row."""
    backends: dict[str, Evaluate] = {}
    for name in ("opa_inprocess", "regopy", "rest_opa", "rest_regopy"):
        backends[name] = request.getfixturevalue(name).evaluate
    if os.environ.get("OPA_URL"):
        backends["real_opa"] = request.getfixturevalue("real_opa").evaluate
    differing = []
    for case in TABLE["cases"]:
        answers = {name: evaluate(case["input"]) for name, evaluate in backends.items()}
        if len({json.dumps(a, sort_keys=True) for a in answers.values()}) != 1:
            differing.append((case["name"], answers))
    assert len(TABLE["cases"]) >= 27
    assert not differing, f"backends disagree on {len(differing)} row(s): {differing}"


@pytest.mark.parametrize("engine_class", [EmbeddedRegoEngine, OpaInProcessEngine])
def test_an_evaluation_error_is_a_refusal_on_both_in_process_engines(
    engine_class: type[InProcessEngine],
) -> None:
    """Two rules giving the decision two values is an evaluation error on both engines: the
    answer is a refusal with a reason, never an exception (fail closed)."""
    if engine_class is OpaInProcessEngine and OPA_MISSING is not None:
        pytest.skip(f"OPA's evaluator cannot run in-process: {OPA_MISSING}")
    modules = {
        "conflict.rego": "package onceonly.exchange\n"
        'decision := {"allow": true} if input.client\n'
        'decision := {"allow": false} if input.service\n'
    }
    engine = engine_class({}, modules=modules)
    decision = engine.decide(
        PolicyInput(
            client=ClientId.parse("JP/GOV/132098/tax"),
            service=ServiceId.parse("JP/GOV/132098/resident-registry/address"),
            purpose="tax-assessment",
            subject=None,
            now=datetime(2026, 11, 23, 11, 40, tzinfo=UTC),
        )
    )
    assert not decision
    assert decision.reasons == ("policy evaluation failed: denied",)
    assert decision.fields == frozenset()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_opa_denies_within_the_timeout() -> None:
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


def _generated_inputs() -> list[dict[str, Any]]:
    """Every combination of the fixture's clients, services, purposes, operations, consents,
    requested fields and times at the windows' edges (and outside any service or right)."""
    clients = sorted(
        {c for m in DATA["access_rights"].values() for s in m.values() for c in s}
        | {"JP/GOV/132098/library", "JP/COM/1234567890123/other"}
    )
    services = [
        *sorted({s for m in DATA["services"].values() for s in m}),
        "JP/GOV/132098/resident-registry/unknown",
    ]
    purposes = sorted(
        {p for m in DATA["services"].values() for s in m.values() for p in s["purposes"]}
    )
    consents: list[Any] = [
        None,
        {"allow": True, "consent_id": "c-1", "fields": ["address", "iban"]},
        {"allow": False, "consent_id": "c-2", "fields": []},
    ]
    times = [
        "2019-12-31T14:59:59Z",
        "2026-03-31T15:00:00+00:00",
        "2026-04-01T00:00:00+09:00",
        "2027-03-31T14:59:59.999999+00:00",
        "2027-04-01T00:00:00+09:00",
    ]
    inputs = []
    i = 0
    for client in clients:
        for service in services:
            for purpose in purposes:
                for consent in consents:
                    for now in times:
                        i += 1
                        inputs.append(
                            {
                                "client": client,
                                "service": service,
                                "purpose": purpose,
                                "now": now,
                                "operation": ("read", "change")[i % 2],
                                "requested_fields": (None, ["address", "name"], ["iban"])[i % 3],
                                "consent": consent,
                            }
                        )
    return inputs


@needs_opa
def test_opa_and_regopy_agree_on_every_combination_of_the_fixture(
    opa_inprocess: OpaInProcessEngine, regopy: EmbeddedRegoEngine
) -> None:
    """Beyond the table: the two in-process engines on a few hundred generated inputs."""
    inputs = _generated_inputs()
    answers = [(opa_inprocess.evaluate(d), regopy.evaluate(d)) for d in inputs]
    differing = [(d, a) for d, a in zip(inputs, answers, strict=True) if a[0] != a[1]]
    allowed = [a for a, _ in answers if a and a["allow"]]
    assert len(inputs) >= 500
    assert allowed, "the generated inputs must include allowed exchanges"
    assert not differing, f"{len(differing)} of {len(inputs)} differ, e.g. {differing[:3]}"
