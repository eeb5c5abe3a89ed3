"""Registries declared in a file: what a node serves, and how (issue 13, docs/adapters.md).

An operator describes each registry behind a node in one TOML file: its subsystem id, its kind
(``sql``: tables in a department's own database; ``http``: an existing departmental REST system)
and the services it offers — code, version, description, purposes, the data fields with their
types, and the change operations with the fields each may set. ``load_registries`` reads and
validates the file; ``adapters.factory.build_adapters`` turns the declaration into adapters, and
the same declaration gives the central registry its service entries and ``getOpenAPI`` its
schemas. A node serves exactly what is declared; nothing about a registry is wired in code.

Trust assumption: the file is the operator's, but it is checked like input: every model is frozen
with ``extra="forbid"`` (a misspelt key is an error, not a silently ignored setting), and every
error names the key path at fault (``registries[2].services[0].fields.birth_date.type: …``).
Secrets never need to be in the file: a DSN or an upstream token can be read from an environment
variable named in the file (``dsn_env``, ``bearer_token_env``), and a DSN that carries a password
inline is refused.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from adapters.base import FieldType, ServiceSpec, build_spec
from adapters.sql import ColumnField, SqlAdapter, SqlServiceConfig, SqlUpdate
from exchange.errors import ConfigurationError, OnceOnlyError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.ports import ServiceDescription

__all__ = [
    "BASE_URL_PATTERN",
    "ChangeDecl",
    "EventDecl",
    "FieldDecl",
    "HttpRegistry",
    "HttpServiceDecl",
    "MemberDecl",
    "RegistriesConfig",
    "RegistryDecl",
    "SqlFieldDecl",
    "SqlRegistry",
    "SqlServiceDecl",
    "load_registries",
    "parse_registries",
]

MAX_TIMEOUT_S = 120.0
MAX_ATTEMPTS = 10
_FROZEN = ConfigDict(frozen=True, extra="forbid")
_CODE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ENV = r"^[A-Z_][A-Z0-9_]*$"
_SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
BASE_URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
"""What an HTTP registry's upstream base URL must look like (in the file or its variable)."""
_PLACEHOLDER = re.compile(r"\{[^{}/]*\}")
_SECRET_HEADER = re.compile(r"authorization|cookie|key|token|secret|password", re.IGNORECASE)


class MemberDecl(BaseModel):
    """A member's display names (used when provisioning the central registry)."""

    model_config = _FROZEN

    name_ja: str
    name_en: str = ""


class FieldDecl(BaseModel):
    """One data field: its JSON type. In the file, ``name = "date"`` is short for
    ``name = { type = "date" }``."""

    model_config = _FROZEN

    type: FieldType = "string"
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


class SqlFieldDecl(FieldDecl):
    """A field of an SQL registry: also the column it comes from (default: the field's name)."""

    column: str | None = Field(default=None, pattern=_SQL_NAME)


class ChangeDecl(BaseModel):
    """A change operation: the fields a call may set; ``required`` ones (default: all) it must."""

    model_config = _FROZEN

    fields: tuple[str, ...] = Field(min_length=1)
    required: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChangeDecl:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("a field is named twice")
        if self.required is not None and not set(self.required) <= set(self.fields):
            raise ValueError("required must be a subset of fields")
        return self

    @property
    def must(self) -> tuple[str, ...]:
        return self.fields if self.required is None else self.required


class EventDecl(BaseModel):
    """A change event the registry publishes (issue 17 item 3, docs/adapters.md "Change events"):
    each successful call of the change service ``published_by`` is told to the subscribers of
    this event service, carrying the declared ``fields`` (a subset of that change's fields) as the
    call set them. Subscribers subscribe through the exchange, under the same access rights,
    statutes, consents and Rego policy as a read (docs/protocol.md §9)."""

    model_config = _FROZEN

    code: str = Field(pattern=_CODE)
    version: str | None = Field(default=None, pattern=_CODE)
    description: str = Field(min_length=1)
    purposes: tuple[str, ...] = Field(min_length=1)
    published_by: str = Field(pattern=_CODE)
    """The code of this registry's change service whose calls are the changes."""
    fields: tuple[str, ...] = Field(min_length=1)

    def describe(self, client: ClientId, change: _ServiceDecl) -> ServiceDescription:
        source = ServiceId(client, change.code, change.version)
        return ServiceDescription(
            code=self.code,
            version=self.version,
            description=self.description,
            fields=self.fields,
            purposes=self.purposes,
            event_of=str(source),
        )


class _ServiceDecl(BaseModel):
    model_config = _FROZEN

    code: str = Field(pattern=_CODE)
    version: str | None = Field(default=None, pattern=_CODE)
    description: str = Field(min_length=1)
    purposes: tuple[str, ...] = Field(min_length=1)
    many: bool = False
    """A response is a JSON array of objects (e.g. every property of one owner)."""
    change: ChangeDecl | None = None
    re_serves: str | None = Field(default=None, max_length=255)
    """The service id (versioned or not) whose data this service passes on: refused for a
    subject whose data arrived from it under "no onward transfer" (docs/adapters.md)."""

    def _check_change(self, fields: dict[str, Any]) -> None:
        if self.change is None:
            return
        unknown = sorted(set(self.change.fields) - set(fields))
        if unknown:
            raise ValueError(f"change names undeclared fields: {unknown}")
        if self.many:
            raise ValueError("a change operation answers one record: many must be false")

    def _spec(self, fields: dict[str, Any]) -> ServiceSpec:
        return build_spec(
            code=self.code,
            version=self.version,
            description=self.description,
            fields={f: (d.type, d.description) for f, d in fields.items()},
            purposes=self.purposes,
            change=self.change.fields if self.change else None,
            required=self.change.must if self.change else (),
            many=self.many,
            re_serves=self.re_serves,
        )


class SqlServiceDecl(_ServiceDecl):
    """A service over the registry's table (or its own ``table``) keyed by the subject column."""

    fields: dict[Annotated[str, Field(pattern=_CODE)], SqlFieldDecl] = Field(min_length=1)
    table: str | None = Field(default=None, pattern=_SQL_NAME)
    key_column: str | None = Field(default=None, pattern=_SQL_NAME)

    @model_validator(mode="after")
    def _check(self) -> SqlServiceDecl:
        self._check_change(self.fields)
        return self


class HttpServiceDecl(_ServiceDecl):
    """A service at ``method path`` upstream (``{subject}``: this agency's subject identifier)."""

    fields: dict[Annotated[str, Field(pattern=_CODE)], FieldDecl] = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH"] = "GET"
    path: str = Field(pattern=r"^/")

    @field_validator("path")
    @classmethod
    def _placeholders(cls, path: str) -> str:
        others = set(_PLACEHOLDER.findall(path)) - {"{subject}"}
        if others:
            raise ValueError(f"only {{subject}} may be substituted, not {sorted(others)}")
        return path

    @model_validator(mode="after")
    def _check(self) -> HttpServiceDecl:
        self._check_change(self.fields)
        if self.change is not None and self.method == "GET":
            raise ValueError("a change operation cannot be a GET upstream")
        return self

    def spec(self) -> ServiceSpec:
        return self._spec(self.fields)


class _RegistryDecl(BaseModel):
    model_config = _FROZEN

    id: str
    """The subsystem's X-Road id, e.g. ``JP/GOV/132098/resident-registry``."""
    name_ja: str = ""
    name_en: str = ""

    @field_validator("id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        try:
            return str(ClientId.parse(value))
        except OnceOnlyError as exc:
            raise ValueError(
                f"not a subsystem id (INSTANCE/CLASS/MEMBER/SUBSYSTEM): {exc}"
            ) from None

    @property
    def client(self) -> ClientId:
        return ClientId.parse(self.id)

    @property
    def client_id(self) -> str:
        return self.id

    @property
    def member(self) -> str:
        return str(self.client.member)

    @property
    def subsystem(self) -> str:
        return self.client.subsystem

    events: tuple[EventDecl, ...] = ()
    """The change events this registry publishes (``EventDecl``)."""

    @staticmethod
    def _unique(services: tuple[_ServiceDecl, ...], events: tuple[EventDecl, ...] = ()) -> None:
        codes = [s.code for s in services] + [e.code for e in events]
        if len(set(codes)) != len(codes):
            raise ValueError(f"a service code is declared twice: {codes}")
        for i, e in enumerate(events):
            change = next((s for s in services if s.code == e.published_by), None)
            if change is None or change.change is None:
                raise ValueError(
                    f"events[{i}]: published_by names no change service of this registry"
                )
            extra = sorted(set(e.fields) - set(change.change.fields))
            if extra or len(set(e.fields)) != len(e.fields):
                raise ValueError(
                    f"events[{i}]: fields must be distinct fields the change sets; not {extra}"
                )

    def event_descriptions(self) -> tuple[ServiceDescription, ...]:
        """The declared change events as service descriptions (for the central registry)."""
        services: tuple[_ServiceDecl, ...] = self.services  # type: ignore[attr-defined]
        by_code = {s.code: s for s in services}
        return tuple(e.describe(self.client, by_code[e.published_by]) for e in self.events)


class SqlRegistry(_RegistryDecl):
    """Tables in a department's own database. The DSN: ``dsn``, or the environment variable named
    by ``dsn_env``; neither means the node's own database for registries."""

    kind: Literal["sql"]
    dsn: str | None = None
    dsn_env: str | None = Field(default=None, pattern=_ENV)
    table: str = Field(pattern=_SQL_NAME)
    key_column: str = Field(pattern=_SQL_NAME)
    """The column holding this agency's subject identifier (its pseudonym, never a master id)."""
    services: tuple[SqlServiceDecl, ...] = Field(min_length=1)

    @field_validator("dsn")
    @classmethod
    def _no_inline_secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL") from None
        if url.password:
            raise ValueError("carries a password: name an environment variable in dsn_env")
        return value

    @model_validator(mode="after")
    def _check(self) -> SqlRegistry:
        if self.dsn is not None and self.dsn_env is not None:
            raise ValueError("give dsn or dsn_env, not both")
        self._unique(self.services, self.events)
        for i, s in enumerate(self.services):  # the SQL adapter's own checks (key never set, …)
            try:
                self._config(s)
            except ValidationError as exc:
                raise ValueError(_describe(exc, ("services", i))) from None
        return self

    def _config(self, s: SqlServiceDecl) -> SqlServiceConfig:
        return SqlServiceConfig(
            code=s.code,
            version=s.version,
            description=s.description,
            purposes=s.purposes,
            table=s.table or self.table,
            key_column=s.key_column or self.key_column,
            fields={
                f: ColumnField(column=d.column or f, type=d.type, description=d.description)
                for f, d in s.fields.items()
            },
            many=s.many,
            update=SqlUpdate(fields=s.change.fields, required=s.change.must) if s.change else None,
        )

    def service_configs(self) -> tuple[SqlServiceConfig, ...]:
        return tuple(self._config(s) for s in self.services)

    def specs(self) -> tuple[ServiceSpec, ...]:
        return tuple(c.spec() for c in self.service_configs())

    def adapter(
        self,
        engine: Engine | str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        db_work: str = "auto",
    ) -> SqlAdapter:
        """An ``SqlAdapter`` over ``engine`` (the DSN resolved by the caller)."""
        return SqlAdapter(engine, self.service_configs(), clock=clock, db_work=db_work)


class HttpRegistry(_RegistryDecl):
    """An existing departmental REST system at ``base_url``, or at the URL held by the
    environment variable ``base_url_env`` names (read when the node starts, like ``dsn_env``: one
    file serves every environment the system is deployed in)."""

    kind: Literal["http"]
    base_url: str | None = Field(default=None, pattern=BASE_URL_PATTERN)
    base_url_env: str | None = Field(default=None, pattern=_ENV)
    timeout_s: float = Field(default=5.0, gt=0, le=MAX_TIMEOUT_S)
    max_attempts: int = Field(default=3, ge=1, le=MAX_ATTEMPTS)
    backoff_s: float = Field(default=0.1, ge=0, le=MAX_TIMEOUT_S)
    headers: dict[str, str] = Field(default_factory=dict)
    """Headers sent upstream with every call (not secrets: use ``header_env``)."""
    header_env: dict[str, Annotated[str, Field(pattern=_ENV)]] = Field(default_factory=dict)
    """Secret headers: header name → the environment variable holding its value."""
    bearer_token_env: str | None = Field(default=None, pattern=_ENV)
    """The environment variable holding a token, sent as ``Authorization: Bearer …``."""
    openapi: str | dict[str, Any] | None = None
    """The upstream's own OpenAPI document: a path (relative to this file) or an inline table.
    When given, every service's ``method path`` must be one of its operations."""
    services: tuple[HttpServiceDecl, ...] = Field(min_length=1)

    @field_validator("headers")
    @classmethod
    def _no_secret_headers(cls, value: dict[str, str]) -> dict[str, str]:
        secret = sorted(h for h in value if _SECRET_HEADER.search(h))
        if secret:
            raise ValueError(f"{secret} would put a secret in the file: use header_env")
        return value

    @field_validator("openapi")
    @classmethod
    def _load_openapi(
        cls, value: str | dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        if value is None or isinstance(value, dict):
            doc = value
        else:
            base = (info.context or {}).get("base_dir", Path.cwd())
            try:
                doc = json.loads((Path(base) / value).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read the upstream OpenAPI {value}: {exc}") from None
        if doc is not None and not (
            isinstance(doc, dict) and "openapi" in doc and isinstance(doc.get("paths"), dict)
        ):
            raise ValueError("not an OpenAPI document (needs 'openapi' and 'paths')")
        return doc

    @model_validator(mode="after")
    def _check(self) -> HttpRegistry:
        if (self.base_url is None) == (self.base_url_env is None):
            raise ValueError("give base_url or base_url_env (one of them)")
        self._unique(self.services, self.events)
        if self.bearer_token_env is not None and any(
            h.lower() == "authorization" for h in self.header_env
        ):
            raise ValueError("give bearer_token_env or an Authorization header_env, not both")
        if isinstance(self.openapi, dict):
            operations = {
                (_PLACEHOLDER.sub("{}", path), method.upper())
                for path, item in self.openapi["paths"].items()
                if isinstance(item, dict)
                for method in item
            }
            for i, s in enumerate(self.services):
                if (_PLACEHOLDER.sub("{}", s.path), s.method) not in operations:
                    raise ValueError(
                        f"services[{i}]: {s.method} {s.path} is not an operation of the "
                        "upstream's OpenAPI"
                    )
        return self

    def specs(self) -> tuple[ServiceSpec, ...]:
        return tuple(s.spec() for s in self.services)


RegistryDecl = Annotated[SqlRegistry | HttpRegistry, Field(discriminator="kind")]


class RegistriesConfig(BaseModel):
    """One node's (or one federation's) registries file."""

    model_config = _FROZEN

    members: dict[str, MemberDecl] = Field(default_factory=dict)
    registries: tuple[RegistryDecl, ...] = ()

    @field_validator("members")
    @classmethod
    def _member_ids(cls, value: dict[str, MemberDecl]) -> dict[str, MemberDecl]:
        out: dict[str, MemberDecl] = {}
        for key, member in value.items():
            try:
                out[str(MemberId.parse(key))] = member
            except OnceOnlyError as exc:
                raise ValueError(f"{key!r} is not a member id: {exc}") from None
        return out

    @model_validator(mode="after")
    def _check(self) -> RegistriesConfig:
        ids = [r.id for r in self.registries]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"registries declared twice: {twice}")
        return self

    def hosted_by(self, member: MemberId) -> tuple[SqlRegistry | HttpRegistry, ...]:
        """The registries of one member (what that member's node serves)."""
        return tuple(r for r in self.registries if r.client.member == member)

    def get(self, client: ClientId | str) -> SqlRegistry | HttpRegistry:
        """The registry declared as ``client`` (``KeyError`` when there is none)."""
        for r in self.registries:
            if r.id == str(client):
                return r
        raise KeyError(str(client))


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and part in ("sql", "http"):
            continue  # the discriminator's branch, not a key of the file
        else:
            out += ("." if out else "") + part
    return out or "<root>"


def _describe(exc: ValidationError, under: tuple[int | str, ...] = ()) -> str:
    """Each error as ``key.path[i]: message``, ``under`` prefixed to its location."""
    return "; ".join(
        f"{_key_path((*under, *err['loc']))}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False)
    )


def parse_registries(
    data: dict[str, Any], *, base_dir: Path | None = None, source: str = "registries"
) -> RegistriesConfig:
    """Validate a parsed registries file (``ConfigurationError`` naming the bad key path)."""
    try:
        return RegistriesConfig.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigurationError(f"{source}: {_describe(exc)}") from None


def load_registries(path: Path | str) -> RegistriesConfig:
    """Read and validate a registries TOML file (``ConfigurationError`` on any fault)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the registries file: {exc.strerror}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
    return parse_registries(data, base_dir=path.parent, source=str(path))
