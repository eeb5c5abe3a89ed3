"""The SQL adapter against a real database (SQLite, or PostgreSQL with DATABASE_URL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, inspect, select, text, update

from adapters.base import openapi_for
from adapters.reference import REGISTRY_TABLES, create_registry_schema, registry
from adapters.sql import ColumnField, SqlAdapter, SqlServiceConfig, SqlUpdate
from adapters.store import IDEMPOTENCY_TABLE
from exchange.db import make_engine, upgrade
from exchange.errors import ClientError, ConflictError, NotFoundError
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import AdapterRequest, RegistryAdapter

RR = registry("resident-registry")
LAND = registry("land-registry")
CLIENT = ClientId.parse("JP/GOV/132098/municipal-tax")
NOW = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
RESIDENT = "R0001"


def _request(
    code: str,
    *,
    subject: str | None = RESIDENT,
    fields: tuple[str, ...] = ("name", "birth_date", "address", "moved_in_on"),
    body: object = None,
    key: str | None = None,
    provider: str = RR.client_id,
) -> AdapterRequest:
    return AdapterRequest(
        service=ServiceId.parse(f"{provider}/{code}/v1"),
        client=CLIENT,
        method="POST" if body is not None else "GET",
        path=f"/{code}",
        query="",
        subject=subject,
        purpose="address-change",
        message_id="m-1",
        fields=frozenset(fields),
        body=json.dumps(body, ensure_ascii=False).encode() if body is not None else b"",
        content_type="application/json" if body is not None else None,
        idempotency_key=key,
    )


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    create_registry_schema(eng, "resident-registry")
    create_registry_schema(eng, "land-registry")
    with eng.begin() as conn:
        conn.execute(
            insert(REGISTRY_TABLES["resident-registry"]),
            [
                {
                    "resident_id": RESIDENT,
                    "name": "町田　花子",
                    "name_kana": "マチダ　ハナコ",
                    "birth_date": date(1985, 6, 1),
                    "sex": "女",
                    "address": "東京都町田市森野二丁目1番1号",
                    "household_id": "H1",
                    "relationship": "世帯主",
                    "moved_in_on": date(2015, 4, 1),
                }
            ],
        )
        conn.execute(
            insert(REGISTRY_TABLES["land-registry"]),
            [
                {
                    "property_number": f"132098000000{i}",
                    "owner_id": "L1",
                    "kind": kind,
                    "location": "東京都町田市中町一丁目2番3号",
                    "area_m2": 100 + i,
                    "cause": "売買",
                    "transfer_date": date(2026, 3, i + 1),
                }
                for i, kind in enumerate(("土地", "建物"))
            ],
        )
    yield eng
    eng.dispose()


@pytest.fixture
def adapter(engine: Engine) -> SqlAdapter:
    return RR.adapter(engine, clock=lambda: NOW)


def _address(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(text("SELECT address FROM residents WHERE resident_id = 'R0001'")).scalar()
        )


def test_sql_adapter_satisfies_the_registry_adapter_port(adapter: SqlAdapter) -> None:
    assert isinstance(adapter, RegistryAdapter)
    described = {s.code: s for s in adapter.services()}
    assert set(described) == {"person", "address", "address-change"}
    assert described["address-change"].changes
    assert not described["person"].changes
    assert described["person"].response_schema is not None
    assert described["person"].response_schema["properties"]["birth_date"]["anyOf"][0] == {
        "format": "date",
        "type": "string",
    }
    assert described["address-change"].request_schema is not None
    assert set(described["address-change"].request_schema["required"]) == {
        "address",
        "moved_in_on",
    }


def test_openapi_document_lists_every_service_with_its_schemas(adapter: SqlAdapter) -> None:
    doc = openapi_for(RR.client_id, adapter.services())
    assert doc["openapi"].startswith("3.1")
    change = doc["paths"][f"/r1/{RR.client_id}/address-change/v1"]["post"]
    assert change["requestBody"]["content"]["application/json"]["schema"]["title"]
    key = next(p for p in change["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header"
    assert key["required"] is True
    assert "get" in doc["paths"][f"/r1/{RR.client_id}/person/v1"]


def test_read_returns_only_the_requested_fields(adapter: SqlAdapter) -> None:
    response = asyncio.run(adapter.call(_request("person", fields=("name", "birth_date"))))
    assert response.status == 200
    assert response.data == {"name": "町田　花子", "birth_date": "1985-06-01"}


def test_read_of_an_unknown_subject_is_not_found(adapter: SqlAdapter) -> None:
    with pytest.raises(NotFoundError):
        asyncio.run(adapter.call(_request("person", subject="nobody")))


def test_read_without_a_subject_is_a_client_error(adapter: SqlAdapter) -> None:
    with pytest.raises(ClientError, match="needs a subject"):
        asyncio.run(adapter.call(_request("person", subject=None)))


def test_unknown_service_or_version_is_a_client_error(adapter: SqlAdapter) -> None:
    with pytest.raises(ClientError, match="not offered"):
        asyncio.run(adapter.call(_request("tax-secrets")))
    wrong_version = AdapterRequest(
        **{
            **{f: getattr(_request("person"), f) for f in AdapterRequest.__slots__},
            "service": ServiceId.parse(f"{RR.client_id}/person/v9"),
        }
    )
    with pytest.raises(ClientError, match="not offered"):
        asyncio.run(adapter.call(wrong_version))


def test_many_service_returns_every_row_of_the_owner(engine: Engine) -> None:
    land = LAND.adapter(engine)
    response = asyncio.run(
        land.call(
            _request(
                "property",
                subject="L1",
                fields=("kind", "transfer_date"),
                provider=LAND.client_id,
            )
        )
    )
    assert response.data == [
        {"kind": "土地", "transfer_date": "2026-03-01"},
        {"kind": "建物", "transfer_date": "2026-03-02"},
    ]
    nobody = asyncio.run(
        land.call(_request("property", subject="L9", fields=("kind",), provider=LAND.client_id))
    )
    assert nobody.data == []


NEW = {"address": "東京都町田市原町田六丁目7番8号", "moved_in_on": "2026-04-01"}


def test_change_without_idempotency_key_is_refused_and_changes_nothing(
    adapter: SqlAdapter, engine: Engine
) -> None:
    with pytest.raises(ClientError, match="idempotency key"):
        asyncio.run(adapter.call(_request("address-change", body=NEW)))
    assert _address(engine) == "東京都町田市森野二丁目1番1号"


def test_change_updates_the_row_and_answers_the_new_state(
    adapter: SqlAdapter, engine: Engine
) -> None:
    response = asyncio.run(adapter.call(_request("address-change", body=NEW, key="k-1")))
    assert response.data == {"address": NEW["address"], "moved_in_on": "2026-04-01"}
    assert _address(engine) == NEW["address"]


def test_repeated_change_returns_the_first_result_without_changing_twice(
    adapter: SqlAdapter, engine: Engine
) -> None:
    first = asyncio.run(adapter.call(_request("address-change", body=NEW, key="k-1")))
    # Someone else changes the row afterwards; a repeat of k-1 must not overwrite it again.
    with engine.begin() as conn:
        conn.execute(
            update(REGISTRY_TABLES["resident-registry"]).values(
                address="東京都町田市中町一丁目1番1号"
            )
        )
    again = asyncio.run(adapter.call(_request("address-change", body=NEW, key="k-1")))
    assert again == first
    assert _address(engine) == "東京都町田市中町一丁目1番1号"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(IDEMPOTENCY_TABLE)).scalar() == 1


def test_idempotency_key_reused_for_a_different_change_is_a_conflict(
    adapter: SqlAdapter, engine: Engine
) -> None:
    asyncio.run(adapter.call(_request("address-change", body=NEW, key="k-1")))
    other = {**NEW, "address": "東京都町田市旭町一丁目1番1号"}
    with pytest.raises(ConflictError, match="different request"):
        asyncio.run(adapter.call(_request("address-change", body=other, key="k-1")))
    assert _address(engine) == NEW["address"]


def test_simultaneous_repeats_apply_the_change_once(adapter: SqlAdapter, engine: Engine) -> None:
    async def both() -> list[object]:
        calls = [adapter.call(_request("address-change", body=NEW, key="k-race")) for _ in range(8)]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(both())
    assert all(r == results[0] for r in results)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(IDEMPOTENCY_TABLE)).scalar() == 1


def test_change_of_an_unknown_subject_is_not_found_and_not_recorded(
    adapter: SqlAdapter, engine: Engine
) -> None:
    with pytest.raises(NotFoundError):
        asyncio.run(adapter.call(_request("address-change", subject="nobody", body=NEW, key="k")))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(IDEMPOTENCY_TABLE)).scalar() == 0


@pytest.mark.parametrize(
    "body",
    [
        {"address": "東京都町田市森野1-1"},  # a required field missing
        {**NEW, "moved_in_on": "not a date"},
        {**NEW, "name": "someone else"},  # a field the service may not change
    ],
    ids=["missing-field", "bad-date", "undeclared-field"],
)
def test_change_body_breaking_the_request_schema_is_a_client_error(
    adapter: SqlAdapter, engine: Engine, body: dict[str, str]
) -> None:
    with pytest.raises(ClientError, match="request schema"):
        asyncio.run(adapter.call(_request("address-change", body=body, key="k-bad")))
    assert _address(engine) == "東京都町田市森野二丁目1番1号"


def test_change_service_called_with_get_is_a_client_error(adapter: SqlAdapter) -> None:
    req = _request("address-change", body=NEW, key="k")
    as_get = AdapterRequest(
        **{**{f: getattr(req, f) for f in AdapterRequest.__slots__}, "method": "GET"}
    )
    with pytest.raises(ClientError, match="use POST"):
        asyncio.run(adapter.call(as_get))


def test_idempotency_table_comes_from_the_alembic_branch(db_url: str) -> None:
    eng = make_engine(db_url)
    upgrade(eng)
    assert "adapters_idempotency" in inspect(eng).get_table_names()
    create_registry_schema(eng, "resident-registry")  # ensure-schema is a no-op on top
    assert "residents" in inspect(eng).get_table_names()
    eng.dispose()


def test_configuration_rejects_updating_the_key_column() -> None:
    with pytest.raises(ValueError, match="key column"):
        SqlServiceConfig(
            code="x",
            description="x",
            table="t",
            key_column="id",
            fields={"id": ColumnField(column="id")},
            update=SqlUpdate(fields=("id",)),
        )


def test_adapter_built_from_a_url_reads_and_closes_its_engine(engine: Engine, db_url: str) -> None:
    async def go() -> object:
        adapter = RR.adapter(db_url)
        try:
            return (await adapter.call(_request("address", fields=("address",)))).data
        finally:
            await adapter.aclose()

    assert asyncio.run(go()) == {"address": "東京都町田市森野二丁目1番1号"}


def test_change_clashing_with_a_department_constraint_is_a_conflict(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE mail_accounts (owner VARCHAR(32) PRIMARY KEY, email VARCHAR(64) UNIQUE)"
            )
        )
        conn.execute(
            text("INSERT INTO mail_accounts VALUES ('A', 'a@example.jp'), ('B', 'b@example.jp')")
        )
    adapter = SqlAdapter(
        engine,
        [
            SqlServiceConfig(
                code="email-change",
                description="change the e-mail address",
                table="mail_accounts",
                key_column="owner",
                fields={"email": ColumnField(column="email")},
                update=SqlUpdate(fields=("email",), required=("email",)),
            )
        ],
    )
    request = AdapterRequest(
        service=ServiceId.parse("JP/GOV/132098/mail/email-change"),
        client=CLIENT,
        method="POST",
        path="",
        query="",
        subject="B",
        purpose="address-change",
        message_id="m",
        fields=frozenset({"email"}),
        body=b'{"email": "a@example.jp"}',
        idempotency_key="k-clash",
    )
    with pytest.raises(ConflictError, match="constraints of mail_accounts"):
        asyncio.run(adapter.call(request))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(IDEMPOTENCY_TABLE)).scalar() == 0


def test_reads_on_the_loop_and_in_threads_answer_the_same_for_every_type(tmp_path: Path) -> None:
    """SQLite reads run on the event loop straight to the driver; the values must be exactly what
    the SQLAlchemy path gives (its result processors), for every field type."""
    eng = make_engine(f"sqlite:///{tmp_path / 'types.sqlite'}")
    with eng.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE things (id VARCHAR PRIMARY KEY, s VARCHAR, i INTEGER, n FLOAT, "
                "b BOOLEAN, d DATE, t DATETIME, empty VARCHAR)"
            )
        )
    config = SqlServiceConfig(
        code="thing",
        description="every type",
        table="things",
        key_column="id",
        fields={
            "s": ColumnField(column="s", type="string"),
            "i": ColumnField(column="i", type="integer"),
            "n": ColumnField(column="n", type="number"),
            "b": ColumnField(column="b", type="boolean"),
            "d": ColumnField(column="d", type="date"),
            "t": ColumnField(column="t", type="datetime"),
            "empty": ColumnField(column="empty", type="string"),
        },
        purposes=("address-change",),
    )
    loop_reads = SqlAdapter(eng, [config], db_work="inline")
    thread_reads = SqlAdapter(eng, [config], db_work="threads")
    from sqlalchemy import Boolean, Date, DateTime, Float, Integer, String, column, table

    things = table(
        "things",
        column("id", String()),
        column("s", String()),
        column("i", Integer()),
        column("n", Float()),
        column("b", Boolean()),
        column("d", Date()),
        column("t", DateTime(timezone=True)),
        column("empty", String()),
    )
    with eng.begin() as conn:
        conn.execute(
            insert(things).values(
                id="x1",
                s="町田",
                i=42,
                n=1.5,
                b=True,
                d=date(2026, 4, 1),
                t=datetime(2026, 4, 1, 9, 30, tzinfo=UTC),
                empty=None,
            )
        )
    fields = ("s", "i", "n", "b", "d", "t", "empty")
    request = _request("thing", subject="x1", fields=fields, provider=RR.client_id)
    a = asyncio.run(loop_reads.call(request))
    b = asyncio.run(thread_reads.call(request))
    assert a.data == b.data
    assert a.data == {
        "s": "町田",
        "i": 42,
        "n": 1.5,
        "b": True,
        "d": "2026-04-01",
        "t": b.data["t"],  # type: ignore[index]
        "empty": None,
    }
    # the loop's connection sees a change committed by another connection at its next read
    with eng.begin() as conn:
        conn.execute(text("UPDATE things SET i = 43 WHERE id = 'x1'"))
    assert asyncio.run(loop_reads.call(request)).data["i"] == 43  # type: ignore[index]
    with pytest.raises(NotFoundError):
        asyncio.run(loop_reads.call(_request("thing", subject="nobody", fields=("s",))))
    asyncio.run(loop_reads.aclose())
    eng.dispose()


def test_postgres_reads_answer_what_sqlalchemy_answers_for_every_type(pg_url: str) -> None:
    """PostgreSQL reads go straight to psycopg as prepared statements; each field type must come
    out as the SQLAlchemy path gives it — a ``number`` stored NUMERIC or DOUBLE PRECISION a float,
    one record or many."""
    eng = make_engine(pg_url)
    with eng.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE things (id VARCHAR PRIMARY KEY, s VARCHAR, i INTEGER, "
                "n NUMERIC(10, 2), f DOUBLE PRECISION, b BOOLEAN, d DATE, t TIMESTAMPTZ, "
                "empty VARCHAR)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO things VALUES ('x1', '町田', 42, 1.50, 2.25, true, '2026-04-01', "
                "'2026-04-01 09:30:00+00', NULL), ('x2', '森野', 7, 3.00, 0.5, false, "
                "'2026-05-01', '2026-05-01 00:00:00+00', 'e')"
            )
        )
    types = {"s": "string", "i": "integer", "n": "number", "f": "number", "b": "boolean"}
    types |= {"d": "date", "t": "datetime", "empty": "string"}
    fields = {f: ColumnField(column=f, type=t) for f, t in types.items()}  # type: ignore[arg-type]
    one = SqlServiceConfig(
        code="thing",
        description="one",
        table="things",
        key_column="id",
        fields=fields,
        purposes=("address-change",),
    )
    many = one.model_copy(update={"code": "things", "key_column": "s", "many": True})
    adapter = SqlAdapter(eng, [one, many])
    request = _request("thing", subject="x1", fields=tuple(types), provider=RR.client_id)
    got = asyncio.run(adapter.call(request))
    assert got.data == {
        "s": "町田",
        "i": 42,
        "n": 1.5,
        "f": 2.25,
        "b": True,
        "d": "2026-04-01",
        "t": "2026-04-01T09:30:00+00:00",
        "empty": None,
    }
    assert type(got.data["n"]) is float  # type: ignore[index]
    compiled = adapter._compiled["thing"]  # the SQLAlchemy path, for comparison
    with eng.connect() as conn:
        assert adapter._select(conn, compiled, "x1", frozenset(types)) == got.data
    listed = asyncio.run(
        adapter.call(_request("things", subject="森野", fields=("n", "d"), provider=RR.client_id))
    )
    assert listed.data == [{"n": 3.0, "d": "2026-05-01"}]
    with pytest.raises(NotFoundError):
        asyncio.run(adapter.call(_request("thing", subject="nobody", fields=("s",))))
    asyncio.run(adapter.aclose())
    eng.dispose()
