"""The OpenAPI documents every component serves are complete, and say the same as the routes.

Issue #14 item 10. Every document (central server with the consent service and the pseudonym
translator, each node, the one-stop desk, the standalone desk and a runner) validates with
openapi-spec-validator; every operation has a stable operationId of its own, declares its
security (``[]`` when public, every scheme named in ``components``), answers its errors as
RFC 9457 problems (``application/problem+json``, the shared ``Problem`` schema), and a 503 says
when to retry. The node documents differ only in their title and the clients they host, and the
desk's and the runner's only add nothing to what ``onceonly serve``'s desk serves: the fuzzing
of ``tests/integration/test_openapi_fuzz.py`` covers them all.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from openapi_spec_validator import validate

from adapters.reference.registries import reference_config
from adapters.reference.rights import ONE_STOP
from exchange.identifiers import MemberId
from exchange.keystore import KeyStore
from exchange.node.app import create_node_app
from exchange.settings import Settings
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer
from exchange.web.problems import install_problem_handlers
from onceonly.desk import DeskSettings, RunnerSettings, create_desk_app, create_runner_app
from onceonly.federation import member_prefix, one_stop_app, provision
from onceonly.wiring import build_node_parts, central_app

OPERATION_ID = re.compile(r"^[a-z][A-Za-z0-9]+$")
"""Stable, chosen names (FastAPI's generated ones carry the path and the method: ``a_b_get``)."""
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FastAPI]:
    """Every component's app, built from a provisioned instance (SQLite, nothing served)."""
    tmp = tmp_path_factory.mktemp("documents")
    # a demo-style instance: its citizens sign in at the development issuer
    settings = Settings(data_dir=tmp / "data", database_url=None, allow_dev_issuer=True)
    provisioned = provision(settings, "http://127.0.0.1:9", citizens=0)
    key = provisioned.api_keys[str(ONE_STOP)]
    issuer_key = tmp / "issuer.pem"
    issuer_key.write_bytes(
        DevIssuer.load(
            settings.data_dir / DEV_ISSUER_KEY,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        ).public_key_pem()
    )
    node = "http://127.0.0.1:9" + member_prefix(ONE_STOP.member)
    procedures = f"sqlite:///{tmp / 'procedures.sqlite'}"
    return {
        "central": central_app(settings),
        **{
            f"node {m}": create_node_app(
                settings, MemberId.parse(m), build_node_parts(settings, MemberId.parse(m))
            )
            for m in sorted(reference_config().members)
        },
        "one-stop": one_stop_app(settings, node, key),
        "desk": create_desk_app(
            DeskSettings(
                database_url=procedures,
                node_url=node,
                api_key=key,
                consent_url="http://127.0.0.1:9/central",
                token_public_key_file=issuer_key,
            )
        ),
        "runner": create_runner_app(
            RunnerSettings(
                database_url=procedures,
                node_url=node,
                api_key=key,
                signing_key_file=KeyStore(settings.data_dir).subsystem_key(ONE_STOP),
            )
        ),
    }


@pytest.fixture(scope="module")
def documents(apps: dict[str, FastAPI]) -> dict[str, dict[str, Any]]:
    return {name: app.openapi() for name, app in apps.items()}


def _request(app: FastAPI, method: str, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.request(method, path)

    return asyncio.run(go())


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert method in METHODS, (path, method)
            yield path, method, op


def test_every_document_is_valid_openapi(documents: dict[str, dict[str, Any]]) -> None:
    for name, doc in documents.items():
        validate(doc)  # raises on the first error
        assert doc["openapi"].startswith("3.1"), name


def test_every_operation_has_a_stable_operation_id_of_its_own(
    documents: dict[str, dict[str, Any]],
) -> None:
    for name, doc in documents.items():
        ids = [op.get("operationId", "") for _, _, op in _operations(doc)]
        assert [i for i in ids if not OPERATION_ID.match(i)] == [], name
        assert len(ids) == len(set(ids)), name


def test_every_operation_declares_its_security_with_known_schemes(
    documents: dict[str, dict[str, Any]],
) -> None:
    for name, doc in documents.items():
        schemes = doc.get("components", {}).get("securitySchemes", {})
        for path, method, op in _operations(doc):
            assert "security" in op, (name, method, path)
            for requirement in op["security"]:
                assert set(requirement) <= set(schemes), (name, method, path, requirement)


def test_the_exchange_routes_are_in_a_node_s_document_with_an_api_key(
    documents: dict[str, dict[str, Any]],
) -> None:
    doc = documents["node JP/GOV/132098"]
    service = "/r1/{xRoadInstance}/{memberClass}/{memberCode}/{subsystemCode}/{serviceCode}"
    assert set(doc["paths"][service]) == {"get", "post", "put", "patch", "delete"}
    assert doc["paths"][service]["post"]["security"] == [{"apiKey": []}, {"apiKeyBearer": []}]
    assert doc["paths"]["/x1/messages"]["post"]["security"] == []
    assert "requestBody" in doc["paths"]["/x1/messages"]["post"]
    assert "requestBody" in doc["paths"]["/platform/v1/consent-requests"]["post"]
    auditor = doc["paths"]["/audit/entries"]["get"]
    assert auditor["security"] == [{"bearerToken": ["auditor"]}]
    decision = next(p for p in auditor["parameters"] if p["name"] == "decision")
    assert decision["schema"]["anyOf"][0]["enum"] == ["allow", "deny", "error", "info"]
    signed = documents["central"]["paths"]["/consent/v1/gate/use"]["post"]
    assert signed["security"] == [{"nodeClient": [], "nodeSignature": [], "nodeTime": []}]


def test_every_error_answer_is_a_problem_and_a_503_says_when_to_retry(
    documents: dict[str, dict[str, Any]],
) -> None:
    for name, doc in documents.items():
        assert "Problem" in doc["components"]["schemas"], name
        for path, method, op in _operations(doc):
            where = (name, method, path)
            assert "422" not in op["responses"], where  # the apps answer a bad request 400
            for status, response in op["responses"].items():
                if status.startswith("2"):
                    continue
                assert response["content"] == PROBLEM, (*where, status)
                if status == "503":
                    assert response["headers"]["Retry-After"]["required"] is True, where


def test_other_answers_declare_their_media_types(documents: dict[str, dict[str, Any]]) -> None:
    node = documents["node JP/GOV/132098"]["paths"]
    assert set(node["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(node["/audit/export"]["get"]["responses"]["200"]["content"]) == {"application/jsonl"}
    assert set(node["/audit/checkpoint"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    receipt = documents["central"]["paths"][
        "/consent/v1/consents/{consent_id}/receipts/{receipt_id}"
    ]["get"]
    assert set(receipt["responses"]["200"]["content"]) == {"application/json", "text/html"}


def _without_hosting(doc: dict[str, Any]) -> dict[str, Any]:
    """A node's document less what differs between nodes: its title and hosted clients."""
    text = repr({k: v for k, v in doc.items() if k != "info"})
    return {"document": re.sub(r"'enum': \[[^\]]*\]", "'enum': [hosted]", text)}


def test_the_node_documents_differ_only_in_title_and_hosted_clients(
    documents: dict[str, dict[str, Any]],
) -> None:
    nodes = [doc for name, doc in documents.items() if name.startswith("node ")]
    assert len(nodes) == len(reference_config().members)
    assert all(_without_hosting(doc) == _without_hosting(nodes[0]) for doc in nodes)


def test_the_standalone_desk_and_runner_serve_nothing_the_served_desk_does_not(
    documents: dict[str, dict[str, Any]],
) -> None:
    served = documents["one-stop"]["paths"]
    assert documents["desk"]["paths"] == served
    assert set(documents["runner"]["paths"]) == {"/healthz", "/readyz", "/metrics"}
    assert all(documents["runner"]["paths"][p] == served[p] for p in documents["runner"]["paths"])


def test_a_method_a_path_does_not_take_is_answered_405_naming_every_method_it_takes() -> None:
    app = FastAPI()
    install_problem_handlers(app)
    router = APIRouter(prefix="/things")

    @router.get("")
    def list_things() -> list[str]:
        return []

    @router.post("")
    def add_thing() -> str:
        return "added"

    @router.get("/{thing}")
    def get_thing(thing: str) -> str:
        return thing

    @router.post("/special")
    def special() -> str:
        return "special"

    app.include_router(router)
    for method, path, allow in (
        ("DELETE", "/things", "GET, POST"),
        ("OPTIONS", "/things", "GET, POST"),
        ("PUT", "/things/one", "GET"),
        ("PUT", "/things/special", "POST"),  # the concrete path names the resource
    ):
        answer = _request(app, method, path)
        assert answer.status_code == 405, (method, path)
        assert answer.headers["allow"] == allow, (method, path)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "Client.MethodNotAllowed"


def test_a_node_answers_405_with_allow_on_its_exchange_routes(apps: dict[str, FastAPI]) -> None:
    app = apps["node JP/GOV/132098"]
    service = "/r1/JP/GOV/132098/resident-registry/address/v1"
    for method, path, allow in (
        ("TRACE", service, "DELETE, GET, PATCH, POST, PUT"),
        ("POST", "/r1/JP/GOV/132098/resident-registry/listMethods", "GET"),
        ("GET", "/x1/messages", "POST"),
    ):
        answer = _request(app, method, path)
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.headers["allow"] == allow, (method, path)


def test_a_node_without_a_valid_registry_answers_health_503_as_a_problem_with_retry_after(
    apps: dict[str, FastAPI],
) -> None:
    answer = _request(apps["node JP/GOV/132098"], "GET", "/healthz")  # never fetched one
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["code"] == "Server.ServerProxy.OutdatedGlobalConf"
