"""The SQL adapter: services served from tables in a department's own database (issue 6).

A department maps its tables to services by configuration (``SqlServiceConfig``): the table, the
key column holding *this agency's* subject identifier (its pseudonym, never a master id), the map
from data field to column, and — for a changing service — the fields a call may set. Any
SQLAlchemy URL works; blocking database work runs in a worker thread.

Changes are idempotent: a changing call must carry an idempotency key; the update and the record
of its first result (``adapters_idempotency``, in the same database) commit in one transaction, so
a repeat returns the first result and changes nothing twice. Two simultaneous first calls race on
the record's primary key: the loser's transaction (its update included) rolls back and it returns
the winner's result.

Trust assumption: the node has verified and policy-checked the request; the department's database
is trusted to hold its own data (answers are not re-validated beyond type conversion).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    TableClause,
    bindparam,
    column,
    insert,
    select,
    table,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine

from adapters.base import (
    FieldType,
    ServiceSpec,
    build_spec,
    json_dumps,
    parse_body,
    resolve_service,
    select_fields,
)
from adapters.store import IDEMPOTENCY_TABLE, ensure_idempotency_table
from exchange.db import make_engine, read_cursor, run_blocking, runs_inline
from exchange.errors import ClientError, ConfigurationError, ConflictError, NotFoundError
from exchange.ports import AdapterRequest, AdapterResponse, JsonValue, ServiceDescription

__all__ = ["ColumnField", "FieldType", "SqlAdapter", "SqlServiceConfig", "SqlUpdate"]

MAX_IDEMPOTENCY_KEY_CHARS = 128
MAX_PREPARED_READS = 64  # prepared SELECTs kept per service (one per distinct field set)

_SA_TYPES: dict[str, Callable[[], TypeEngine[Any]]] = {
    "string": String,
    "integer": Integer,
    "number": Float,
    "boolean": Boolean,
    "date": Date,
    "datetime": lambda: DateTime(timezone=True),
}
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ColumnField(BaseModel):
    """One data field: the column it comes from and its JSON type."""

    model_config = _FROZEN

    column: str
    type: FieldType = "string"
    description: str | None = None


class SqlUpdate(BaseModel):
    """A declared update: which fields a call may set (``required`` ones it must set)."""

    model_config = _FROZEN

    fields: tuple[str, ...] = Field(min_length=1)
    required: tuple[str, ...] = ()


class SqlServiceConfig(BaseModel):
    """One service over one table, keyed by this agency's subject identifier."""

    model_config = _FROZEN

    code: str
    version: str | None = None
    description: str
    purposes: tuple[str, ...] = ()
    table: str
    key_column: str
    fields: dict[str, ColumnField] = Field(min_length=1)
    many: bool = False
    update: SqlUpdate | None = None

    @model_validator(mode="after")
    def _check(self) -> SqlServiceConfig:
        if self.update is not None:
            unknown = set(self.update.fields) - set(self.fields)
            if unknown:
                raise ValueError(f"update names unknown fields: {sorted(unknown)}")
            if not set(self.update.required) <= set(self.update.fields):
                raise ValueError("update.required must be a subset of update.fields")
            if any(self.fields[f].column == self.key_column for f in self.update.fields):
                raise ValueError("the key column cannot be updated")
            if self.many:
                raise ValueError("a changing service answers one record (many=False)")
        return self

    def spec(self) -> ServiceSpec:
        return build_spec(
            code=self.code,
            version=self.version,
            description=self.description,
            fields={f: (c.type, c.description) for f, c in self.fields.items()},
            purposes=self.purposes,
            change=self.update.fields if self.update is not None else None,
            required=self.update.required if self.update is not None else (),
            many=self.many,
        )


_RawRead = tuple[list[str], str, list[Callable[[Any], Any] | None], bool]
"""A prepared read for the driver: wanted fields, SQL, each column's result processor, and
whether the subject is bound by position (else by name, ``subject``)."""


class _Compiled:
    __slots__ = ("columns", "config", "key", "raw_reads", "reads", "spec", "table")

    def __init__(self, config: SqlServiceConfig) -> None:
        self.config = config
        self.spec = config.spec()
        cols: dict[str, Column[Any]] = {}
        for f, c in config.fields.items():
            cols[f] = column(c.column, _SA_TYPES[c.type]())  # type: ignore[assignment]
        self.columns = cols
        self.key = column(config.key_column, String())
        self.table: TableClause = table(config.table, self.key, *cols.values())
        # one prepared SELECT per set of wanted fields (a handful per service), subject bound
        self.reads: dict[frozenset[str], tuple[list[str], Any]] = {}
        self.raw_reads: dict[frozenset[str], _RawRead] = {}

    def raw_read(self, fields: frozenset[str], dialect: Any) -> _RawRead:
        """The prepared SELECT compiled once for the driver: its SQL (one parameter, the
        subject, by position or by name as the driver's style has it) and each column's result
        processor (what SQLAlchemy would apply)."""
        found = self.raw_reads.get(fields)
        if found is None:
            wanted, stmt = self.read_statement(fields)
            compiled = stmt.compile(dialect=dialect)
            positional = compiled.positiontup is not None
            if list(compiled.positiontup or compiled.binds) != ["subject"]:
                raise ConfigurationError("unexpected parameters in a prepared read")
            processors = [_result_processor(col.type, dialect) for col in stmt.selected_columns]
            found = (wanted, str(compiled), processors, positional)
            if len(self.raw_reads) < MAX_PREPARED_READS:
                self.raw_reads[fields] = found
        return found

    def read_statement(self, fields: frozenset[str]) -> tuple[list[str], Any]:
        found = self.reads.get(fields)
        if found is None:
            wanted = [f for f in self.config.fields if f in fields]
            cols = [self.columns[f].label(f) for f in wanted] or [self.key.label("_key")]
            stmt = select(*cols).select_from(self.table).where(self.key == bindparam("subject"))
            if self.config.many:
                stmt = stmt.order_by(*(self.columns[f] for f in wanted))
            found = (wanted, stmt)
            if len(self.reads) < MAX_PREPARED_READS:
                self.reads[fields] = found
        return found


class SqlAdapter:
    """Serves ``services`` from one department database (implements ``RegistryAdapter``)."""

    def __init__(
        self,
        engine: Engine | str,
        services: Sequence[SqlServiceConfig],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ensure_schema: bool = True,
        db_work: str = "auto",
    ) -> None:
        """``db_work``: where reads run (``exchange.db.runs_inline``; ``Settings.db_work``)."""
        if not services:
            raise ConfigurationError("an SQL adapter needs at least one service")
        self._owns_engine = isinstance(engine, str)
        self._engine = make_engine(engine) if isinstance(engine, str) else engine
        self._compiled: dict[str, _Compiled] = {}
        for cfg in services:
            if cfg.code in self._compiled:
                raise ConfigurationError(f"service {cfg.code} declared twice")
            self._compiled[cfg.code] = _Compiled(cfg)
        self._specs = {code: c.spec for code, c in self._compiled.items()}
        self._clock = clock
        self._inline_reads = runs_inline(self._engine, mode=db_work)
        self._loop_conn: Any = None  # the event loop's own read connection (SQLite, inline)
        if ensure_schema and any(c.spec.changes for c in self._compiled.values()):
            ensure_idempotency_table(self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def services(self) -> Sequence[ServiceDescription]:
        return [spec.describe() for spec in self._specs.values()]

    async def aclose(self) -> None:
        """Close the loop's read connection; dispose of the engine if this adapter made it."""
        if self._loop_conn is not None:
            self._loop_conn.close()  # back to the pool
            self._loop_conn = None
        if self._owns_engine:
            await asyncio.to_thread(self._engine.dispose)

    async def call(self, request: AdapterRequest) -> AdapterResponse:
        spec = resolve_service(self._specs, request)
        compiled = self._compiled[spec.code]
        if request.subject is None:
            raise ClientError(f"service {spec.code} needs a subject", code="Client.MissingSubject")
        body = parse_body(spec, request)
        if spec.changes:
            key = request.idempotency_key
            if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
                raise ClientError(
                    f"service {spec.code} changes the registry: an idempotency key "
                    f"(1..{MAX_IDEMPOTENCY_KEY_CHARS} characters) is required",
                    code="Client.MissingIdempotencyKey",
                )
            assert body is not None  # a changing service always has a request model
            values = body.model_dump(exclude_unset=True)
            if not values:
                raise ClientError(
                    f"service {spec.code}: the body sets no field", code="Client.InvalidBody"
                )
            return await asyncio.to_thread(
                self._change, compiled, request, request.subject, key, values
            )
        # Reads on SQLite run on the loop (``exchange.db.runs_inline``); changes always in a thread.
        if self._inline_reads and self._engine.dialect.name == "sqlite":
            return self._read_inline(compiled, request.subject, request.fields)
        return await run_blocking(
            self._inline_reads, self._read, compiled, request.subject, request.fields
        )

    # --- blocking work (worker thread) ----------------------------------------------------------

    def _select(self, conn: Connection, c: _Compiled, subject: str, fields: frozenset[str]) -> Any:
        wanted, stmt = c.read_statement(fields)
        if c.config.many:
            rows = conn.execute(stmt, {"subject": subject}).mappings().all()
            return [_plain(row, wanted) for row in rows]
        row = conn.execute(stmt, {"subject": subject}).mappings().first()
        if row is None:
            raise NotFoundError(f"subject not found in {c.config.table}")
        return _plain(row, wanted)

    def _read_inline(self, c: _Compiled, subject: str, fields: frozenset[str]) -> AdapterResponse:
        """``_read`` on the event loop over SQLite: the compiled SELECT straight to the driver on
        one connection kept for the loop (the SQLAlchemy execution path cost more than the query)."""
        wanted, sql, processors, _ = c.raw_read(fields, self._engine.dialect)
        if self._loop_conn is None:
            self._loop_conn = self._engine.raw_connection()
        cur = self._loop_conn.cursor()
        try:
            cur.execute(sql, (subject,))
            rows = cur.fetchall() if c.config.many else cur.fetchmany(1)
        finally:
            cur.close()
        self._loop_conn.commit()  # end the implicit read transaction: later reads see new data
        return _answer(c, wanted, processors, rows)

    def _read(self, c: _Compiled, subject: str, fields: frozenset[str]) -> AdapterResponse:
        # one SELECT needs no transaction: in autocommit PostgreSQL is spared a BEGIN and a
        # ROLLBACK round trip per read (docs/performance.md)
        if self._engine.dialect.name == "postgresql":
            return self._read_postgres(c, subject, fields)
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return AdapterResponse(200, self._select(conn, c, subject, fields))

    def _read_postgres(self, c: _Compiled, subject: str, fields: frozenset[str]) -> AdapterResponse:
        """The compiled SELECT straight to psycopg on a pooled connection in autocommit, as a
        server-side prepared statement: one round trip, none of SQLAlchemy's per-call work."""
        wanted, sql, processors, positional = c.raw_read(fields, self._engine.dialect)
        with read_cursor(self._engine) as cur:
            cur.execute(sql, (subject,) if positional else {"subject": subject}, prepare=True)
            rows = cur.fetchall() if c.config.many else cur.fetchmany(1)
        return _answer(c, wanted, processors, rows)

    def _change(
        self,
        c: _Compiled,
        request: AdapterRequest,
        subject: str,
        key: str,
        values: Mapping[str, Any],
    ) -> AdapterResponse:
        client, service = str(request.client), str(request.service.unversioned)
        digest = hashlib.sha256(
            json_dumps({"subject": subject, "body": _jsonable(values)}).encode()
        ).hexdigest()
        idem = IDEMPOTENCY_TABLE
        pk = (
            (idem.c.client == client)
            & (idem.c.service == service)
            & (idem.c.idempotency_key == key)
        )
        try:
            with self._engine.begin() as conn:
                # Claim the key with the transaction's first statement, a write: SQLite takes its
                # write lock up front (no stale read snapshot to upgrade), and PostgreSQL makes a
                # simultaneous claimant of the same key wait for us, then fail on the primary key.
                try:
                    conn.execute(
                        insert(idem).values(
                            client=client,
                            service=service,
                            idempotency_key=key,
                            subject=subject,
                            request_hash=digest,
                            status=0,
                            response="",
                            created_at=self._clock(),
                        )
                    )
                except IntegrityError as exc:
                    raise _KeyTaken from exc
                result = conn.execute(
                    update(c.table)
                    .where(c.key == subject)
                    .values({c.columns[f]: v for f, v in values.items()})
                )
                if result.rowcount == 0:
                    raise NotFoundError(f"subject not found in {c.config.table}")
                data = self._select(conn, c, subject, request.fields)
                conn.execute(update(idem).where(pk).values(status=200, response=json_dumps(data)))
                return AdapterResponse(200, data)
        except _KeyTaken:
            # The key was used before (or by a simultaneous call that committed first): our
            # transaction rolled back without changing anything; answer the stored first result.
            with self._engine.connect() as conn:
                stored = conn.execute(select(idem).where(pk)).mappings().first()
            if stored is None:  # pragma: no cover - the claimant rolled back meanwhile
                raise ConflictError(
                    "a simultaneous call with this idempotency key did not complete; retry",
                    code="Client.IdempotencyKeyInFlight",
                ) from None
            return _replay(stored, digest, request.fields)
        except IntegrityError as exc:
            raise ConflictError(
                f"the change clashes with the constraints of {c.config.table}"
            ) from exc


class _KeyTaken(Exception):
    """The idempotency key already has a record (internal control flow)."""


def _replay(stored: RowMapping, digest: str, fields: frozenset[str]) -> AdapterResponse:
    if stored["request_hash"] != digest:
        raise ConflictError(
            "idempotency key already used for a different request",
            code="Client.IdempotencyKeyReused",
        )
    # The first result, never more than this request may see.
    data: JsonValue = select_fields(json.loads(stored["response"]), fields)
    return AdapterResponse(int(stored["status"]), data)


def _plain(row: RowMapping, wanted: Sequence[str]) -> dict[str, JsonValue]:
    return {f: _jsonable_value(row[f]) for f in wanted}


def _jsonable(values: Mapping[str, Any]) -> dict[str, JsonValue]:
    return {k: _jsonable_value(v) for k, v in values.items()}


def _result_processor(type_: TypeEngine[Any], dialect: Any) -> Callable[[Any], Any] | None:
    """What SQLAlchemy would apply to a driver value of a column declared ``type_``.

    psycopg hands back Python values already (``date``, aware ``datetime``, ``bool``, ``int``,
    ``str``), except a NUMERIC column as ``Decimal``: a ``number`` field is a float, as
    SQLAlchemy's ``Float`` makes it (its own processor needs the column's type code, which a
    prepared read does not have when it is compiled)."""
    if dialect.name == "postgresql":
        return _as_float if isinstance(type_, Float) else None
    processor: Callable[[Any], Any] | None = type_.dialect_impl(dialect).result_processor(
        dialect, None
    )
    return processor


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def _jsonable_value(value: Any) -> JsonValue:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _answer(
    c: _Compiled,
    wanted: list[str],
    processors: list[Callable[[Any], Any] | None],
    rows: Sequence[Sequence[Any]],
) -> AdapterResponse:
    """A read's driver rows as the service's answer (the record, or the list of them)."""
    out = [
        {
            f: _jsonable_value(proc(v) if proc is not None else v)
            for f, v, proc in zip(wanted, row, processors, strict=False)
        }
        for row in rows
    ]
    if c.config.many:
        return AdapterResponse(200, out)
    if not out:
        raise NotFoundError(f"subject not found in {c.config.table}")
    return AdapterResponse(200, out[0])
