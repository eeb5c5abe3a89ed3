"""``portal.remote`` against an in-memory peer behind httpx's transport (the real services are
exercised in tests/integration/test_portal_as_process.py): ids cannot steer the portal to another
route, the bearer token is forwarded, and errors are mapped by who is at fault."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from audit.checkpoint import NoteSigner
from exchange.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    RefusalError,
    TransportError,
)
from exchange.tokens import Principal
from portal.ports import Caller
from portal.remote import RemoteConsent, RemoteLog

CALLER = Caller(Principal("citizen-1", frozenset({"citizen"})), "token-abc")


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "%2e%2e", "x?y", "", "a" * 200])
def test_an_id_that_is_not_one_path_segment_never_reaches_the_service(bad: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    with _client(handler) as http:
        consent = RemoteConsent(http, "http://central.test")
        for call in (consent.get_consent, consent.revoke, consent.approve_request):
            with pytest.raises(NotFoundError):
                call(CALLER, bad)
    assert seen == []


def test_the_bearer_token_is_forwarded_and_answers_are_checked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer token-abc"
        assert request.url.path == "/consent/v1/consents"
        return httpx.Response(200, json=[{"id": "not a consent"}])

    with _client(handler) as http, pytest.raises(TransportError, match="unexpected"):
        RemoteConsent(http, "http://central.test").list_consents(CALLER)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationError),
        (403, RefusalError),
        (404, NotFoundError),
        (409, ConflictError),
        (500, TransportError),
        (503, TransportError),
    ],
)
def test_service_errors_are_mapped_by_who_is_at_fault(status: int, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": "no"})

    verifier = NoteSigner.generate("onceonly.test/n").verifier()
    with _client(handler) as http, pytest.raises(error):
        RemoteLog(http, "http://node.test", verifier).size(CALLER)


def test_an_unreachable_node_is_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    verifier = NoteSigner.generate("onceonly.test/n").verifier()
    with _client(handler) as http, pytest.raises(TransportError, match="cannot be reached"):
        RemoteLog(http, "http://node.test", verifier).my_record(CALLER, limit=10)


@pytest.mark.parametrize(
    "body",
    [
        {"accesses": [{"index": 0, "entry": {}}], "next_cursor": "soon"},
        {"accesses": [{"index": "x", "entry": {}}], "next_cursor": None},
        {"accesses": "none"},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_answer_from_a_node_is_a_transport_error(body: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    verifier = NoteSigner.generate("onceonly.test/n").verifier()
    with _client(handler) as http, pytest.raises(TransportError, match="unexpected"):
        RemoteLog(http, "http://node.test", verifier).my_record(CALLER, limit=10)
