"""The node's exchange routes in its OpenAPI document (docs/protocol.md §2, §3, §5).

A node serves ``/r1/…``, ``POST /x1/messages`` and ``POST /platform/v1/consent-requests`` from the
raw request (``exchange.node.app``), so FastAPI cannot describe them; ``exchange_paths`` gives their
path items for ``exchange.web.openapi.install_openapi``:

* ``/r1/{xRoadInstance}/{memberClass}/{memberCode}/{subsystemCode}/{serviceCode}[/{serviceVersion}]``
  — a service call through this node, any of GET, POST, PUT, PATCH, DELETE, with the headers of
  the X-Road message protocol for REST and the ``X-OnceOnly-*`` headers, every part constrained as
  the node checks it (``exchange.identifiers``); a service's own document (its fields, purposes and
  bodies) is the metaservice ``getOpenAPI``;
* the metaservices ``listMethods``, ``allowedMethods`` and ``getOpenAPI`` under a subsystem;
* ``/x1/messages`` for other nodes, and the departmental systems' consent requests.

Trust assumption: none — this only describes; ``exchange.node.consumer`` and ``.provider`` check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from exchange.envelope import REPRESENTED_PARTY_PATTERN, SignedMessage
from exchange.identifiers import PART_PATTERN
from exchange.web.openapi import (
    API_KEY,
    PUBLIC,
    binary_body,
    json_body,
    json_content,
    operation,
)

__all__ = ["exchange_paths"]

_FIELD = r"[A-Za-z0-9'()+\-.=?_]{1,64}"
"""A field name in ``X-OnceOnly-Fields``: an identifier part without the comma that separates."""
_PART_SCHEMA = {"type": "string", "pattern": PART_PATTERN}
_SERVICE_METHODS = ("get", "post", "put", "patch", "delete")
# Every status a service call can answer: C1–C6 at this node, and the provider's signed answers
# (its refusals, steps 9–13, and its registry's own answers).
_SERVICE_PROBLEMS = (400, 401, 403, 404, 409, 413, 502, 503)
_TAGS = ("exchange",)


def _header(
    name: str, description: str, schema: Mapping[str, Any], *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": dict(schema),
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _PART_SCHEMA,
    }


_SUBSYSTEM_PARAMETERS = (
    _path("xRoadInstance", "the instance, e.g. JP"),
    _path("memberClass", "the member class, e.g. GOV"),
    _path("memberCode", "the member code, e.g. 132098"),
    _path("subsystemCode", "the provider subsystem, e.g. resident-registry"),
)


def _client_header(clients: Iterable[str]) -> dict[str, Any]:
    return _header(
        "X-Road-Client",
        "the calling subsystem: one hosted by this node, whose API key is presented",
        {"type": "string", "enum": sorted(clients)},
        required=True,
    )


def _call_headers(clients: Iterable[str]) -> list[dict[str, Any]]:
    return [
        _client_header(clients),
        _header("X-OnceOnly-Purpose", "why the data is needed (C2)", _PART_SCHEMA, required=True),
        _header("X-Road-Id", "the message id (a fresh one when absent)", _PART_SCHEMA),
        _header(
            "X-OnceOnly-Subject",
            "the person, by the code the calling agency knows them by",
            _PART_SCHEMA,
        ),
        _header(
            "X-OnceOnly-Fields",
            "data minimisation: only these fields (comma-separated)",
            {"type": "string", "pattern": rf"^{_FIELD}(,{_FIELD}){{0,255}}$"},
        ),
        _header("X-OnceOnly-Consent-Id", "the consent relied on", _PART_SCHEMA),
        _header(
            "X-OnceOnly-Consent",
            "the signed consent artefact (compact JWS)",
            {"type": "string", "minLength": 1, "maxLength": 16384},
        ),
        _header(
            "X-Road-UserId",
            "the user of the departmental system",
            {"type": "string", "maxLength": 255},
        ),
        _header("X-Road-Issue", "the case the call is for", {"type": "string", "maxLength": 255}),
        _header(
            "X-Road-Represented-Party",
            "the party the call is made for, CLASS/CODE (a representation kind and the consent"
            " service's mandate id); signed in the envelope",
            {"type": "string", "maxLength": 255, "pattern": REPRESENTED_PARTY_PATTERN},
        ),
        _header(
            "Idempotency-Key",
            "a repeat of a changing call with the same key changes nothing twice",
            {"type": "string", "minLength": 1, "maxLength": 128},
        ),
    ]


def _service_operation(method: str, versioned: bool, clients: Iterable[str]) -> dict[str, Any]:
    suffix = "Versioned" if versioned else ""
    return operation(
        f"callService{method.capitalize()}{suffix}",
        summary=f"{method.upper()} a service of another (or this) member through this node",
        description="The provider's answer, verified (C5) and restricted to the allowed fields; "
        "the service's own document is `getOpenAPI`. Refusals are RFC 9457 problems.",
        security=API_KEY,
        tags=_TAGS,
        parameters=[
            *_SUBSYSTEM_PARAMETERS,
            _path("serviceCode", "the service, e.g. address"),
            *((_path("serviceVersion", "the service version, e.g. v1"),) if versioned else ()),
            *_call_headers(clients),
        ],
        body=binary_body("passed to the provider as it is (its content type too)")
        if method != "get"
        else None,
        responses={
            "2XX": {
                "description": "the provider registry's answer",
                "content": json_content({}),
            }
        },
        problems=_SERVICE_PROBLEMS,
    )


_SERVICES_SCHEMA = {
    "type": "object",
    "required": ["service"],
    "properties": {
        "service": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "serviceCode", "fields", "purposes", "changes"],
                "properties": {
                    "id": {"type": "string"},
                    "serviceCode": {"type": "string"},
                    "serviceVersion": {"type": ["string", "null"]},
                    "description": {"type": "string"},
                    "fields": {"type": "array", "items": {"type": "string"}},
                    "purposes": {"type": "array", "items": {"type": "string"}},
                    "changes": {"type": "boolean"},
                },
            },
        }
    },
}


def _metaservices(clients: Iterable[str]) -> dict[str, Any]:
    base = "/r1/{xRoadInstance}/{memberClass}/{memberCode}/{subsystemCode}"
    services = {"200": {"description": "the services", "content": json_content(_SERVICES_SCHEMA)}}
    return {
        f"{base}/listMethods": {
            "get": operation(
                "listMethods",
                summary="the services a subsystem offers",
                security=PUBLIC,
                tags=("metaservices",),
                parameters=_SUBSYSTEM_PARAMETERS,
                responses=services,
                problems=(400, 404, 503),
            )
        },
        f"{base}/allowedMethods": {
            "get": operation(
                "allowedMethods",
                summary="the services of a subsystem the caller has an access right to",
                security=API_KEY,
                tags=("metaservices",),
                parameters=[*_SUBSYSTEM_PARAMETERS, _client_header(clients)],
                responses=services,
                problems=(400, 401, 404, 503),
            )
        },
        f"{base}/getOpenAPI": {
            "get": operation(
                "getOpenAPI",
                summary="the OpenAPI document of one service",
                security=API_KEY,
                tags=("metaservices",),
                parameters=[
                    *_SUBSYSTEM_PARAMETERS,
                    {
                        "name": "serviceCode",
                        "in": "query",
                        "required": True,
                        "schema": _PART_SCHEMA,
                    },
                    {"name": "serviceVersion", "in": "query", "schema": _PART_SCHEMA},
                    _client_header(clients),
                ],
                responses={
                    "200": {
                        "description": "an OpenAPI 3.1 document",
                        "content": json_content({"type": "object", "required": ["openapi"]}),
                    }
                },
                problems=(400, 401, 404, 503),
            )
        },
    }


def exchange_paths(
    clients: Iterable[str], consent_request_schema: Mapping[str, Any]
) -> dict[str, Any]:
    """The path items of a node's exchange routes; ``clients`` are the subsystems it hosts and
    ``consent_request_schema`` the consent service's request body (``ConsentRequestInput``)."""
    hosted = sorted(clients)
    base = "/r1/{xRoadInstance}/{memberClass}/{memberCode}/{subsystemCode}/{serviceCode}"
    paths: dict[str, Any] = {
        base: {m: _service_operation(m, False, hosted) for m in _SERVICE_METHODS},
        base + "/{serviceVersion}": {
            m: _service_operation(m, True, hosted) for m in _SERVICE_METHODS
        },
        **_metaservices(hosted),
        "/x1/messages": {
            "post": operation(
                "exchangeMessage",
                summary="a signed request envelope from another node (protocol §3)",
                description="Authenticated by the envelope's signature (steps 2–7), not by HTTP "
                "credentials. A verified request is answered 200 with a signed response envelope, "
                "refusals included; steps 1–7 refuse it unsigned, with one opaque detail.",
                security=PUBLIC,
                tags=_TAGS,
                body=json_body(SignedMessage),
                responses={
                    "200": {
                        "description": "the signed response envelope",
                        "content": json_content(SignedMessage),
                    }
                },
                problems=(400, 413, 503),
            )
        },
        "/platform/v1/consent-requests": {
            "post": operation(
                "createConsentRequest",
                summary="ask a citizen for a consent, signed by this node (protocol §5, Q1–Q4)",
                description="The consent service's answer is passed on as it is.",
                security=API_KEY,
                tags=("consent",),
                parameters=[_client_header(hosted)],
                body=json_body(consent_request_schema),
                responses={
                    "201": {
                        "description": "the consent request, as the citizen will see it",
                        "content": json_content({"type": "object"}),
                    }
                },
                problems=(400, 401, 403, 404, 409, 413, 503),
            )
        },
    }
    return paths
