"""OpenAPI 3.1 documents for services, generated from their descriptions (metaservice
``getOpenAPI``, X-Road "Service Metadata Protocol for REST").

A ``ServiceDescription`` (the ``RegistryAdapter`` port) carries the JSON schemas of a service's
request and answer; this module turns them into the document a departmental system reads to call
the service through its own node: the X-Road REST path ``/r1/{service-id}``, the headers the node
requires (``X-Road-Client``, ``X-OnceOnly-Purpose`` limited to the declared purposes,
``X-OnceOnly-Subject``), and for a change operation ``POST`` with a required JSON body and a
required ``Idempotency-Key`` header. Schema ``$defs`` are hoisted into ``components.schemas`` so
every ``$ref`` resolves against the document.

Trust assumption: the descriptions come from the operator's declaration (the adapters the node
hosts, or the service entries of the verified central registry); nothing here is peer input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from exchange.ports import JsonValue, ServiceDescription

__all__ = ["OPENAPI_VERSION", "PROBLEM_SCHEMA", "hoist_defs", "openapi_document"]

OPENAPI_VERSION = "3.1.0"
_DEFS_REF = "#/$defs/"
_COMPONENTS_REF = "#/components/schemas/"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "an RFC 9457 problem; `type` is stable for its `code` (X-Road style)",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "error_id": {"type": "string", "description": "logged server-side (a 5xx)"},
        "errors": {
            "type": "array",
            "description": "what was not valid in the request (a 400)",
            "items": {"type": "object"},
        },
        "checks": {
            "type": "object",
            "description": "each readiness check and why it failed (a 503 from /readyz)",
            "additionalProperties": {"type": "string"},
        },
    },
}


def _header(name: str, description: str, *, required: bool, schema: dict[str, Any]) -> Any:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


def hoist_defs(schema: Mapping[str, JsonValue], components: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` moved into ``components`` and its refs pointed there."""
    out = dict(schema)
    for name, sub in (out.pop("$defs", None) or {}).items():
        components[name] = _rewrite(sub)
    return _rewrite(out)  # type: ignore[no-any-return]


def _rewrite(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                _COMPONENTS_REF + v[len(_DEFS_REF) :]
                if k == "$ref" and isinstance(v, str) and v.startswith(_DEFS_REF)
                else _rewrite(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v) for v in value]
    return value


def _answer_schema(svc: ServiceDescription) -> Mapping[str, JsonValue]:
    """The declared answer schema; without one, at least the field names (types unknown)."""
    if svc.response_schema is not None:
        return svc.response_schema
    return {"type": "object", "properties": {f: {} for f in svc.fields}}


def _operation(service_id: str, svc: ServiceDescription, components: dict[str, Any]) -> Any:
    purpose: dict[str, Any] = {"type": "string"}
    if svc.purposes:
        purpose["enum"] = list(svc.purposes)
    parameters = [
        _header("X-Road-Client", "the calling subsystem", required=True, schema={"type": "string"}),
        _header("X-OnceOnly-Purpose", "why the data is needed", required=True, schema=purpose),
        _header(
            "X-OnceOnly-Subject",
            "the caller's identifier of the person (its own pseudonym)",
            required=False,
            schema={"type": "string"},
        ),
    ]
    if svc.changes:
        parameters.append(
            _header(
                "Idempotency-Key",
                "a repeat with the same key returns the first result and changes nothing twice",
                required=True,
                schema={"type": "string", "minLength": 1, "maxLength": 128},
            )
        )
    op: dict[str, Any] = {
        "operationId": service_id.replace("/", "_"),
        "summary": svc.description,
        "x-onceonly-fields": list(svc.fields),
        "x-onceonly-purposes": list(svc.purposes),
        "x-onceonly-changes": svc.changes,
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "the registry's answer, restricted to the allowed fields",
                "content": {
                    "application/json": {"schema": hoist_defs(_answer_schema(svc), components)}
                },
            },
            "default": {
                "description": "an RFC 9457 problem",
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            },
        },
    }
    if svc.request_schema is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": hoist_defs(svc.request_schema, components)}},
        }
    return op


SUBSCRIPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["subscription_id", "service", "status", "purpose", "fields", "created_at"],
    "properties": {
        "subscription_id": {"type": "string"},
        "service": {"type": "string"},
        "status": {"enum": ["active", "paused", "ended"]},
        "purpose": {"type": "string"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "basis": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
"""A subscription to a change event (docs/protocol.md §9)."""


def _subscription_paths(
    service_id: str, svc: ServiceDescription, components: dict[str, Any]
) -> dict[str, Any]:
    """A change event's operations: subscribe (``POST``), show and end one subscription."""
    components.setdefault("Subscription", SUBSCRIPTION_SCHEMA)
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Subscription"}}}
    base = _operation(service_id, svc, components)
    base["summary"] = f"subscribe: {svc.description}"
    base["x-onceonly-event-of"] = svc.event_of
    base["responses"] = {
        "201": {"description": "subscribed", "content": ref},
        "200": {"description": "the subscription there was already", "content": ref},
        "default": base["responses"]["default"],
    }
    one = {
        k: v for k, v in base.items() if k not in ("operationId", "summary", "x-onceonly-event-of")
    }
    one["parameters"] = [
        *base["parameters"],
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    one["responses"] = {
        "200": {"description": "the subscription", "content": ref},
        "default": base["responses"]["default"],
    }
    op_id = service_id.replace("/", "_")
    return {
        f"/r1/{service_id}": {"post": base},
        f"/r1/{service_id}/subscriptions/{{id}}": {
            "get": {**one, "operationId": op_id + "_get", "summary": "a subscription"},
            "delete": {**one, "operationId": op_id + "_end", "summary": "end a subscription"},
        },
    }


def openapi_document(
    title: str, services: Iterable[tuple[str, ServiceDescription]]
) -> dict[str, Any]:
    """One OpenAPI 3.1 document for ``services`` (pairs of service id and description).

    A service that changes the registry, or takes a body, is a ``POST``; a read is a ``GET``."""
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, Any] = {}
    for service_id, svc in services:
        if svc.event_of is not None:
            paths.update(_subscription_paths(service_id, svc, components))
            continue
        method = "post" if svc.changes or svc.request_schema is not None else "get"
        paths[f"/r1/{service_id}"] = {method: _operation(service_id, svc, components)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
