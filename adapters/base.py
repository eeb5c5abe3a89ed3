"""The adapter model: how a node serves one subsystem's registry (DESIGN "The parts", issue 6).

An adapter implements ``exchange.ports.RegistryAdapter``. Each service it offers is declared as a
``ServiceSpec``: code, version, description, the data fields it returns, the purposes it is meant
for, whether it reads or changes the registry, and pydantic request/response models. Their JSON
schemas go into ``ServiceDescription.request_schema``/``response_schema``; the node's metaservices
turn them into OpenAPI (``openapi_for`` builds that document).

Trust assumption: the node hands an adapter a request that is already verified and policy-checked
(signature, replay, access right, consent). The adapter still validates the *body* against the
request model (the client wrote it) and the upstream *answer* against the response model (the
registry wrote it), and only selects the fields the request allows. Errors are split by who is at
fault (style rule 10):

- the caller sent a bad body or forgot the idempotency key → ``ClientError``;
- the subject is unknown to this registry → ``NotFoundError``;
- the registry could not be reached or timed out → ``UpstreamUnavailable`` (a ``TransportError``);
- the registry answered something that breaks its own schema → ``UpstreamError`` (a
  ``VerificationError``: bad data from a peer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from exchange.errors import ClientError, TransportError, VerificationError
from exchange.openapi import openapi_document
from exchange.ports import AdapterRequest, JsonValue, ServiceDescription

__all__ = [
    "CHANGE_METHODS",
    "FIELD_TYPES",
    "FieldType",
    "Operation",
    "ServiceSpec",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "build_spec",
    "json_dumps",
    "openapi_for",
    "parse_body",
    "resolve_service",
    "select_fields",
    "validate_upstream",
]

Operation = Literal["read", "change"]
CHANGE_METHODS = frozenset({"POST", "PUT", "PATCH"})
FieldType = Literal["string", "integer", "number", "boolean", "date", "datetime"]
FIELD_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "date": date,
    "datetime": datetime,
}
"""The JSON type of a declared data field, and the Python type its values validate as."""
_FROZEN = ConfigDict(frozen=True, extra="forbid")
MAX_ERROR_DETAIL_CHARS = 300


class UpstreamError(VerificationError):
    """The registry behind the adapter answered something that breaks its declared schema."""

    code = "Server.ServerProxy.Adapter.InvalidResponse"
    status = 502


class UpstreamUnavailable(TransportError):
    """The registry behind the adapter could not be reached or failed (5xx after retries)."""

    code = "Server.ServerProxy.Adapter.Unavailable"
    status = 502


class UpstreamTimeout(UpstreamUnavailable):
    """The registry behind the adapter did not answer in time."""

    code = "Server.ServerProxy.Adapter.Timeout"
    status = 504


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service an adapter offers. ``fields`` are the data fields a response can carry."""

    code: str
    version: str | None
    description: str
    fields: tuple[str, ...]
    response_model: type[BaseModel]
    request_model: type[BaseModel] | None = None
    purposes: tuple[str, ...] = ()
    operation: Operation = "read"
    many: bool = False
    """A response is a JSON array of objects (e.g. every property of one owner)."""
    re_serves: str | None = None
    """The service id whose data this service passes on (``ServiceDescription.re_serves``)."""

    @property
    def changes(self) -> bool:
        return self.operation == "change"

    def response_schema(self) -> dict[str, JsonValue]:
        item = self.response_model.model_json_schema()
        if not self.many:
            return item
        defs = item.pop("$defs", None)
        schema: dict[str, JsonValue] = {"type": "array", "items": item}
        if defs:
            schema["$defs"] = defs
        return schema

    def describe(self) -> ServiceDescription:
        return ServiceDescription(
            code=self.code,
            version=self.version,
            description=self.description,
            fields=self.fields,
            purposes=self.purposes,
            changes=self.changes,
            request_schema=(
                self.request_model.model_json_schema() if self.request_model is not None else None
            ),
            response_schema=self.response_schema(),
            re_serves=self.re_serves,
        )


def build_spec(
    *,
    code: str,
    version: str | None,
    description: str,
    fields: Mapping[str, tuple[FieldType, str | None]],
    purposes: Sequence[str] = (),
    change: Sequence[str] | None = None,
    required: Sequence[str] = (),
    many: bool = False,
    re_serves: str | None = None,
) -> ServiceSpec:
    """A ``ServiceSpec`` from declared fields (name → (type, description)).

    The answer model has every field, optional (data minimisation may drop any); a change
    operation's body model has the fields in ``change``, those in ``required`` mandatory, and no
    other key (``extra="forbid"``)."""
    name = "".join(p.capitalize() for p in code.replace("_", "-").split("-"))
    response_model = create_model(  # type: ignore[call-overload]
        f"{name}Response",
        __config__=_FROZEN,
        **{
            f: (FIELD_TYPES[t] | None, Field(default=None, description=d))
            for f, (t, d) in fields.items()
        },
    )
    request_model: type[BaseModel] | None = None
    if change is not None:
        request_model = create_model(  # type: ignore[call-overload]
            f"{name}Request",
            __config__=_FROZEN,
            **{
                f: (
                    (FIELD_TYPES[fields[f][0]], Field(description=fields[f][1]))
                    if f in required
                    else (FIELD_TYPES[fields[f][0]] | None, Field(None, description=fields[f][1]))
                )
                for f in change
            },
        )
    return ServiceSpec(
        code=code,
        version=version,
        description=description,
        fields=tuple(fields),
        response_model=response_model,
        request_model=request_model,
        purposes=tuple(purposes),
        operation="change" if change is not None else "read",
        many=many,
        re_serves=re_serves,
    )


def resolve_service(specs: Mapping[str, ServiceSpec], request: AdapterRequest) -> ServiceSpec:
    """The spec serving ``request``; refuses unknown services and a read method on a change."""
    spec = specs.get(request.service.code)
    if spec is None or (
        request.service.version is not None
        and spec.version is not None
        and request.service.version != spec.version
    ):
        raise ClientError(
            f"service {request.service} is not offered by this adapter",
            code="Server.ServerProxy.UnknownService",
        )
    if spec.changes and request.method.upper() not in CHANGE_METHODS:
        raise ClientError(
            f"service {spec.code} changes the registry: use POST, PUT or PATCH",
            code="Client.MethodNotAllowed",
        )
    return spec


def parse_body(spec: ServiceSpec, request: AdapterRequest) -> BaseModel | None:
    """Validate the client's body against the request model (``ClientError`` when it fails)."""
    if spec.request_model is None:
        return None
    if not request.body:
        raise ClientError(f"service {spec.code} needs a JSON body", code="Client.InvalidBody")
    try:
        return spec.request_model.model_validate_json(request.body)
    except ValidationError as exc:
        raise ClientError(
            f"body does not match the request schema of {spec.code}: {_summarise(exc)}",
            code="Client.InvalidBody",
        ) from exc


def validate_upstream(spec: ServiceSpec, data: JsonValue) -> JsonValue:
    """Check a registry's answer against the response model; ``UpstreamError`` when it breaks it.

    Returns the answer as plain JSON (dates as ISO strings), one object or a list of objects.
    """
    try:
        if spec.many:
            if not isinstance(data, list):
                raise UpstreamError(f"registry answer for {spec.code} is not a JSON array")
            return [
                spec.response_model.model_validate(item).model_dump(mode="json") for item in data
            ]
        return spec.response_model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise UpstreamError(
            f"registry answer for {spec.code} violates its response schema: {_summarise(exc)}"
        ) from exc


def select_fields(data: JsonValue, fields: frozenset[str]) -> JsonValue:
    """Keep only ``fields`` of an object, or of each object of a list (data minimisation)."""
    if isinstance(data, list):
        return [select_fields(item, fields) for item in data]
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k in fields}
    return data


def _summarise(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    ]
    return "; ".join(parts)[:MAX_ERROR_DETAIL_CHARS]


def openapi_for(subsystem_id: str, services: Sequence[ServiceDescription]) -> dict[str, Any]:
    """An OpenAPI 3.1 document for one subsystem's services (X-Road REST: ``/r1/{service-id}``)."""
    return openapi_document(
        subsystem_id,
        (
            (f"{subsystem_id}/{svc.code}" + (f"/{svc.version}" if svc.version else ""), svc)
            for svc in services
        ),
    )


def json_dumps(data: JsonValue) -> str:
    """Compact, key-sorted JSON (for stored idempotent results and request hashes)."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
