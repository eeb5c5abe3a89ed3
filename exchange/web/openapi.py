"""The OpenAPI documents of the platform's own HTTP faces: nodes, central server, desk, runner.

FastAPI describes what it can see: the happy path of the routes it routes, with auto-generated
operation ids, a 422 that the apps never send (``exchange.web.problems`` answers a caller's bad
input 400) and nothing of the routes that read the raw request. This module is the one place
that completes a document, so that it says everything a route can answer:

* ``documented(...)`` gives a route its stable ``operationId``, the problems it answers
  (``application/problem+json``, the shared ``Problem`` schema, ``Retry-After`` on a 503), its
  security where FastAPI cannot see it (API keys, signed node requests, public routes) and the
  request body of a route that reads the raw request;
* ``install_openapi(app, paths=...)`` post-processes the generated document once: the ``Problem``
  schema and the security schemes in ``components``, FastAPI's 422 replaced by the 400 the apps
  really answer, ``$defs`` of inline schemas hoisted into ``components.schemas``, and the path
  items of routes FastAPI does not route itself (the node's exchange routes).

A bearer token is declared by the dependency that checks it (``exchange.web.auth``), so the
document cannot claim a different check than the route makes. 405 is not declared per operation:
it is the answer to a method the document does not list, and always carries ``Allow``.

Trust assumption: none — this only describes; the routes check.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from exchange.openapi import PROBLEM_SCHEMA, hoist_defs
from exchange.web.problems import PROBLEM_MEDIA_TYPE, TITLES

__all__ = [
    "API_KEY",
    "NODE_REQUEST",
    "PROBLEM_REF",
    "PUBLIC",
    "SECURITY_SCHEMES",
    "Security",
    "binary_body",
    "complete_document",
    "documented",
    "install_openapi",
    "json_body",
    "json_content",
    "media_content",
    "operation",
    "problem_responses",
]

Security = tuple[Mapping[str, Sequence[str]], ...]
"""Alternative security requirements (OpenAPI: any one of them suffices)."""

PROBLEM_REF = "#/components/schemas/Problem"
PUBLIC: Security = ()
"""No credentials: the route is open to anyone who can reach it (``security: []``)."""
API_KEY: Security = ({"apiKey": []}, {"apiKeyBearer": []})
"""A departmental system's API key, issued at its node for the ``X-Road-Client`` it names."""
NODE_REQUEST: Security = ({"nodeClient": [], "nodeSignature": [], "nodeTime": []},)
"""A request signed by a node's member key (``exchange.node_requests``, protocol §5 N1–N3)."""

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-OnceOnly-Api-Key",
        "description": "an API key issued at this node (`onceonly keys api-key CLIENT`) to the "
        "subsystem named in `X-Road-Client` (protocol §2, C1)",
    },
    "apiKeyBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "the same API key as `Authorization: Bearer <key>`",
    },
    "nodeClient": {
        "type": "apiKey",
        "in": "header",
        "name": "X-OnceOnly-Node-Client",
        "description": "the node subsystem signing the request (protocol §5, N1)",
    },
    "nodeSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-OnceOnly-Node-Signature",
        "description": "detached JWS by the subsystem's member key over its client, the method, "
        "the path, the SHA-256 of the body and the time (N2)",
    },
    "nodeTime": {
        "type": "apiKey",
        "in": "header",
        "name": "X-OnceOnly-Node-Time",
        "description": "RFC 3339 UTC time of signing, within the clock-skew window (N3)",
    },
}

_X_ROAD_ERROR = {
    "description": "the problem's code (X-Road style)",
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 1},
}
_VALIDATION_STATUS = "422"
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _problem_response(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Road-Error": _X_ROAD_ERROR}
    if status == 503:
        headers["Retry-After"] = {**_RETRY_AFTER, "required": True}
    return {
        "description": TITLES.get(status, "Error") + " (RFC 9457 problem)",
        "headers": headers,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
    }


def problem_responses(statuses: Iterable[int]) -> dict[str, Any]:
    """The response objects of the problems a route answers, keyed by status."""
    return {str(s): _problem_response(s) for s in sorted(set(statuses))}


def json_content(schema: type[BaseModel] | Mapping[str, Any]) -> dict[str, Any]:
    """``{"application/json": {"schema": …}}`` for a wire model or a JSON schema (``$defs`` are
    hoisted into ``components`` by ``install_openapi``)."""
    if isinstance(schema, type):
        schema = schema.model_json_schema()
    return {"application/json": {"schema": dict(schema)}}


def media_content(media_type: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """``{media_type: {"schema": …}}``, for an answer that is not JSON."""
    return {media_type: {"schema": dict(schema)}}


def json_body(
    schema: type[BaseModel] | Mapping[str, Any], *, description: str | None = None
) -> dict[str, Any]:
    """A required JSON request body, for a route that reads the raw request."""
    body: dict[str, Any] = {"required": True, "content": json_content(schema)}
    if description:
        body["description"] = description
    return body


def binary_body(description: str, *, required: bool = False) -> dict[str, Any]:
    """A request body of any media type, passed on as bytes."""
    return {
        "required": required,
        "description": description,
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }


def _security(security: Security) -> list[dict[str, list[str]]]:
    return [{name: list(roles) for name, roles in req.items()} for req in security]


def operation(
    operation_id: str,
    *,
    summary: str,
    security: Security,
    responses: Mapping[str, Any],
    problems: Iterable[int] = (),
    parameters: Sequence[Mapping[str, Any]] = (),
    body: Mapping[str, Any] | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
) -> dict[str, Any]:
    """A complete operation object, for a route FastAPI does not route itself."""
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": _security(security),
        "responses": {**responses, **problem_responses(problems)},
    }
    if description:
        op["description"] = description
    if tags:
        op["tags"] = list(tags)
    if parameters:
        op["parameters"] = [dict(p) for p in parameters]
    if body is not None:
        op["requestBody"] = dict(body)
    return op


def documented(
    operation_id: str,
    *,
    problems: Iterable[int] = (),
    security: Security | None = None,
    body: Mapping[str, Any] | None = None,
    responses: Mapping[int | str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a FastAPI route decorator: ``operation_id``, ``responses`` (the
    problems it answers, plus other ``responses``) and ``openapi_extra`` (``security`` when the
    route checks something FastAPI cannot see, ``PUBLIC`` when it checks nothing; the raw
    request ``body``). Leave ``security`` out only when a dependency declares it (a bearer
    token, ``exchange.web.auth``)."""
    openapi_extra: dict[str, Any] = {}
    if security is not None:
        openapi_extra["security"] = _security(security)
    if body is not None:
        openapi_extra["requestBody"] = dict(body)
    return {
        "operation_id": operation_id,
        "responses": {str(k): v for k, v in (responses or {}).items()}
        | problem_responses(problems),
        "openapi_extra": openapi_extra or None,
    }


def _complete_operation(op: dict[str, Any], components: dict[str, Any]) -> None:
    """One operation: 422 → the 400 the apps send, inline ``$defs`` hoisted."""
    responses: dict[str, Any] = op.setdefault("responses", {})
    if responses.pop(_VALIDATION_STATUS, None) is not None and "400" not in responses:
        responses["400"] = _problem_response(400)
    for response in responses.values():
        for media in response.get("content", {}).values():
            if "schema" in media:
                media["schema"] = hoist_defs(media["schema"], components)
    for media in op.get("requestBody", {}).get("content", {}).values():
        if "schema" in media:
            media["schema"] = hoist_defs(media["schema"], components)
    for parameter in op.get("parameters", ()):
        if "schema" in parameter:
            parameter["schema"] = hoist_defs(parameter["schema"], components)


def complete_document(
    document: Mapping[str, Any], paths: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """``document`` with ``paths`` added and every operation completed (see the module doc)."""
    doc = copy.deepcopy(dict(document))
    doc.setdefault("paths", {}).update(copy.deepcopy(dict(paths or {})))
    components = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for name in _FASTAPI_VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    schemas["Problem"] = copy.deepcopy(PROBLEM_SCHEMA)
    for item in doc["paths"].values():
        for op in item.values():
            _complete_operation(op, schemas)
    used = {
        name
        for item in doc["paths"].values()
        for op in item.values()
        for req in op.get("security", ())
        for name in req
    }
    declared = {**copy.deepcopy(SECURITY_SCHEMES), **components.get("securitySchemes", {})}
    components["securitySchemes"] = {k: v for k, v in declared.items() if k in used}
    return doc


def install_openapi(
    app: FastAPI, *, paths: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None
) -> None:
    """Serve ``app``'s completed document at its ``openapi_url``; ``paths()`` gives the path
    items of the routes FastAPI does not route itself (built once, on the first request)."""

    generate = app.openapi
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not completed:
            completed.append(complete_document(generate(), paths() if paths else None))
            app.openapi_schema = completed[0]
        return completed[0]

    app.openapi = openapi  # type: ignore[method-assign]
