"""The HTTP adapter against a real upstream process (tests/adapters/upstream_server.py)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import date

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from adapters.base import ServiceSpec, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from adapters.http import HttpAdapter, HttpRoute
from exchange.errors import (
    ClientError,
    ConfigurationError,
    NotFoundError,
    TransportError,
    VerificationError,
)
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import AdapterRequest, AdapterResponse, RegistryAdapter
from tests.adapters import upstream_server

pytestmark = pytest.mark.integration

PROVIDER = "JP/GOV/132098/resident-registry"
CLIENT = ClientId.parse("JP/GOV/132098/water")


class Person(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    address: str
    birth_date: date


class NewAddress(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    address: str


FIELDS = ("name", "address", "birth_date")


def _read(code: str, path: str, method: str = "GET") -> HttpRoute:
    spec = ServiceSpec(code, "v1", f"person via {path}", FIELDS, response_model=Person)
    return HttpRoute(spec, method, path)  # type: ignore[arg-type]


ROUTES = [
    _read("person", "/persons/{subject}"),
    _read("malformed", "/malformed/{subject}"),
    _read("violation", "/violation/{subject}"),
    _read("slow", "/slow/{subject}"),
    _read("broken", "/broken/{subject}"),
    _read("flaky", "/flaky/{subject}"),
    _read("flaky-post", "/flaky-post/{subject}", "POST"),
    _read("teapot", "/teapot/{subject}"),
    _read("forbidden", "/forbidden/{subject}"),
    HttpRoute(
        ServiceSpec(
            "address-change",
            "v1",
            "change the address",
            FIELDS,
            response_model=Person,
            request_model=NewAddress,
            operation="change",
        ),
        "POST",
        "/persons/{subject}/address",
    ),
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with upstream_server.running() as url:
        yield url


def _request(
    code: str,
    subject: str = "P1",
    *,
    fields: tuple[str, ...] = FIELDS,
    body: object = None,
    key: str | None = None,
) -> AdapterRequest:
    return AdapterRequest(
        service=ServiceId.parse(f"{PROVIDER}/{code}/v1"),
        client=CLIENT,
        method="POST" if body is not None else "GET",
        path=f"/{code}",
        query="",
        subject=subject,
        purpose="address-change",
        message_id=f"m-{uuid.uuid4().hex}",
        fields=frozenset(fields),
        body=json.dumps(body, ensure_ascii=False).encode() if body is not None else b"",
        idempotency_key=key,
    )


def _call(
    upstream: str, request: AdapterRequest, *, timeout_s: float = 1.0, attempts: int = 3
) -> AdapterResponse:
    async def go() -> AdapterResponse:
        adapter = HttpAdapter(
            upstream, ROUTES, timeout_s=timeout_s, max_attempts=attempts, backoff_s=0.01
        )
        try:
            return await adapter.call(request)
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def _hits(upstream: str, path: str) -> int:
    return int(httpx.get(f"{upstream}/hits{path}", timeout=2.0).json()["hits"])


def test_http_adapter_satisfies_the_registry_adapter_port(upstream: str) -> None:
    async def go() -> None:
        adapter = HttpAdapter(upstream, ROUTES)
        try:
            assert isinstance(adapter, RegistryAdapter)
            codes = {s.code: s for s in adapter.services()}
            assert codes["address-change"].changes
            assert codes["person"].response_schema is not None
        finally:
            await adapter.aclose()

    asyncio.run(go())


def test_read_is_forwarded_validated_and_restricted_to_the_requested_fields(
    upstream: str,
) -> None:
    response = _call(upstream, _request("person", fields=("name", "birth_date")))
    assert response.data == {"name": "町田　太郎", "birth_date": "1980-04-01"}


def test_upstream_404_is_not_found(upstream: str) -> None:
    with pytest.raises(NotFoundError):
        _call(upstream, _request("person", subject="X-unknown"))


def test_malformed_json_from_upstream_is_an_upstream_error(upstream: str) -> None:
    with pytest.raises(UpstreamError, match="not valid JSON") as info:
        _call(upstream, _request("malformed"))
    assert isinstance(info.value, VerificationError)


def test_schema_violation_from_upstream_names_the_broken_fields(upstream: str) -> None:
    with pytest.raises(UpstreamError, match="violates its response schema") as info:
        _call(upstream, _request("violation"))
    assert "name" in info.value.detail
    assert "birth_date" in info.value.detail
    assert "yesterday" not in info.value.detail  # upstream values are not echoed


def test_slow_upstream_times_out_as_a_transport_error(upstream: str) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        _call(upstream, _request("slow", subject=f"P{uuid.uuid4().hex}"), timeout_s=0.3, attempts=1)
    assert isinstance(info.value, TransportError)
    assert info.value.status == 504
    assert time.monotonic() - started < 1.5


def test_persistent_500_is_retried_then_reported_without_upstream_detail(upstream: str) -> None:
    subject = f"P{uuid.uuid4().hex}"
    with pytest.raises(UpstreamUnavailable, match="HTTP 500 after 3 attempts") as info:
        _call(upstream, _request("broken", subject=subject))
    assert "personal data" not in info.value.detail
    assert _hits(upstream, f"/broken/{subject}") == 3


def test_idempotent_read_is_retried_until_it_succeeds(upstream: str) -> None:
    subject = f"P{uuid.uuid4().hex}"
    response = _call(upstream, _request("flaky", subject=subject))
    assert response.data["name"] == "町田　太郎"
    assert _hits(upstream, f"/flaky/{subject}") == 3


def test_non_idempotent_call_is_not_retried(upstream: str) -> None:
    subject = f"P{uuid.uuid4().hex}"
    with pytest.raises(UpstreamUnavailable, match=r"HTTP 500$"):
        _call(upstream, _request("flaky-post", subject=subject))
    assert _hits(upstream, f"/flaky-post/{subject}") == 1


def test_change_needs_an_idempotency_key(upstream: str) -> None:
    with pytest.raises(ClientError, match="idempotency key"):
        _call(upstream, _request("address-change", body={"address": "x"}))


def test_change_with_key_is_retried_and_applied_once(upstream: str) -> None:
    subject = f"P{uuid.uuid4().hex}-lossy"  # upstream loses its first answer (502)
    body = {"address": "東京都町田市原町田一丁目1番1号"}
    key = uuid.uuid4().hex
    first = _call(upstream, _request("address-change", subject, body=body, key=key))
    repeat = _call(upstream, _request("address-change", subject, body=body, key=key))
    assert first.data["address"] == body["address"]
    assert repeat == first
    changes = httpx.get(f"{upstream}/changes/{subject}", timeout=2.0).json()["changes"]
    assert changes == 1


def test_change_body_breaking_the_request_schema_is_refused_before_upstream(
    upstream: str,
) -> None:
    subject = f"P{uuid.uuid4().hex}"
    with pytest.raises(ClientError, match="request schema"):
        _call(upstream, _request("address-change", subject, body={"addr": 1}, key="k"))
    assert _hits(upstream, f"/persons/{subject}/address") == 0


def test_unexpected_upstream_status_is_an_upstream_error(upstream: str) -> None:
    with pytest.raises(UpstreamError, match="unexpected HTTP 418"):
        _call(upstream, _request("teapot"))


def test_upstream_403_is_a_configuration_error_not_the_callers_fault(upstream: str) -> None:
    with pytest.raises(ConfigurationError, match="not authorised"):
        _call(upstream, _request("forbidden"))


def test_unreachable_upstream_is_a_transport_error() -> None:
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        _call("http://127.0.0.1:9", _request("person"), attempts=2)
