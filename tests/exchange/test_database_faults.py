"""A node whose database cannot be used answers 503 with ``Retry-After``, never 500 or 502
(issue 14.6): a corrupted SQLite file, PostgreSQL connections terminated by the server
(``pg_terminate_backend``) and a database refusing connections. Liveness stays 200, readiness
says 503, the metrics count it, and the node serves again once the database is back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from exchange.db import as_unavailable, normalise_url
from exchange.errors import DatabaseUnavailable
from tests.exchange._federation import (
    ADDRESS,
    RESIDENTS,
    TAX,
    Federation,
    build_federation,
    node_client,
)

DATABASE_ERROR = "Server.ServerProxy.DatabaseError"


def _headers(fed: Federation) -> dict[str, str]:
    return {
        "X-Road-Client": str(TAX),
        "X-OnceOnly-Api-Key": fed.api_keys[TAX],
        "X-OnceOnly-Purpose": "tax-assessment",
        "X-OnceOnly-Subject": "sub-1",
        "X-Road-Id": str(uuid.uuid4()),
    }


async def _get(fed: Federation, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with node_client(fed, TAX.member) as c:
        return await c.get(path, headers=headers or {})


def _exchange(fed: Federation) -> httpx.Response:
    return asyncio.run(_get(fed, f"/r1/{ADDRESS}", _headers(fed)))


def _probe(fed: Federation, path: str) -> httpx.Response:
    return asyncio.run(_get(fed, path))


def _assert_unavailable(r: httpx.Response, codes: tuple[str, ...] = (DATABASE_ERROR,)) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert body["code"] in codes
    assert body["type"].endswith(body["code"].lower())
    assert "Traceback" not in r.text


def _unavailable_count(fed: Federation, where: str) -> float:
    text_ = _probe(fed, "/metrics").text
    prefix = f'onceonly_database_unavailable_total{{where="{where}"}} '
    for line in text_.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


# -- SQLite ----------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_fed(tmp_path: Path) -> Iterator[tuple[Federation, Path]]:
    path = tmp_path / "node.sqlite"
    federation = build_federation(tmp_path, f"sqlite:///{path}")
    yield federation, path
    federation.central_engine.dispose()


def _corrupt(fed: Federation, path: Path) -> None:
    fed.central_engine.dispose()  # close pooled connections: the next one opens the bad file
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    path.write_bytes(b"this is not a database file" * 4096)


def test_a_corrupted_sqlite_file_is_answered_503_with_retry_after(
    sqlite_fed: tuple[Federation, Path],
) -> None:
    fed, path = sqlite_fed
    assert _exchange(fed).status_code == 200
    _corrupt(fed, path)
    _assert_unavailable(_exchange(fed))
    assert _probe(fed, "/healthz").status_code == 200  # liveness: the process is fine
    ready = _probe(fed, "/readyz")
    assert ready.status_code == 503
    assert int(ready.headers["retry-after"]) > 0
    assert ready.json()["checks"]["database"] != "ok"
    assert _unavailable_count(fed, "request") == 1
    assert _unavailable_count(fed, "readiness") == 1


def test_a_corrupted_sqlite_file_fails_the_provider_side_with_503_too(
    sqlite_fed: tuple[Federation, Path],
) -> None:
    """The message endpoint (the fast path) maps it the same way, and the consumer passes the
    provider's unavailability on as 503 rather than a 502."""
    fed, path = sqlite_fed
    provider = fed.nodes[str(RESIDENTS.member)]

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=provider)
        async with httpx.AsyncClient(transport=transport, base_url="http://machida") as c:
            return await c.post("/x1/messages", content=b'{"not": "an envelope"}')

    _corrupt(fed, path)
    _assert_unavailable(asyncio.run(post()))


def test_central_server_readiness_fails_and_liveness_holds_on_a_corrupted_file(
    sqlite_fed: tuple[Federation, Path],
) -> None:
    fed, path = sqlite_fed

    async def get(p: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=fed.central)
        async with httpx.AsyncClient(transport=transport, base_url="http://central") as c:
            return await c.get(p)

    assert asyncio.run(get("/readyz")).status_code == 200
    _corrupt(fed, path)
    assert asyncio.run(get("/healthz")).status_code == 200
    assert asyncio.run(get("/readyz")).status_code == 503
    _assert_unavailable(asyncio.run(get("/registry")))
    metrics = asyncio.run(get("/metrics")).text
    assert 'onceonly_database_unavailable_total{where="request"} 1.0' in metrics
    assert "process_cpu_seconds_total" in metrics


def test_statement_errors_are_not_mistaken_for_unavailability(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(IntegrityError) as dup, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert as_unavailable(dup.value) is None
    with pytest.raises(OperationalError) as locked, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert isinstance(as_unavailable(locked.value), DatabaseUnavailable)
    engine.dispose()


# -- PostgreSQL ------------------------------------------------------------------------------------


class PgServer:
    """Server-side control of one test database, as an operator (or an outage) would do it."""

    def __init__(self, url: str) -> None:
        parsed = make_url(normalise_url(url))
        self.name = parsed.database
        self._admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def terminate_connections(self) -> int:
        with self._admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": self.name},
                ).all()
            )

    def allow_connections(self, allow: bool) -> None:
        with self._admin.connect() as conn:
            conn.execute(
                text(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
            )

    def dispose(self) -> None:
        self._admin.dispose()


@pytest.fixture
def pg_fed(tmp_path: Path, pg_url: str) -> Iterator[tuple[Federation, PgServer]]:
    federation = build_federation(tmp_path, pg_url)
    server = PgServer(pg_url)
    yield federation, server
    server.allow_connections(True)
    server.dispose()
    federation.central_engine.dispose()


def test_terminated_postgres_connections_recover_on_the_next_request(
    pg_fed: tuple[Federation, PgServer],
) -> None:
    fed, server = pg_fed
    assert _exchange(fed).status_code == 200
    assert server.terminate_connections() > 0  # every pooled connection of the node is dead
    r = _exchange(fed)
    assert r.status_code == 200, r.text  # pool_pre_ping replaced them
    assert _probe(fed, "/readyz").status_code == 200


def test_postgres_refusing_connections_is_503_then_served_again(
    pg_fed: tuple[Federation, PgServer],
) -> None:
    fed, server = pg_fed
    assert _exchange(fed).status_code == 200
    server.allow_connections(False)
    server.terminate_connections()
    _assert_unavailable(_exchange(fed))
    assert _probe(fed, "/healthz").status_code == 200
    assert _probe(fed, "/readyz").status_code == 503
    assert _unavailable_count(fed, "request") >= 1
    server.allow_connections(True)
    assert _exchange(fed).status_code == 200
    assert _probe(fed, "/readyz").status_code == 200


def test_connections_terminated_under_load_give_only_200_or_503(
    pg_fed: tuple[Federation, PgServer],
) -> None:
    """Exchanges in flight while the server kills the node's connections: each caller gets its
    data or a 503 with Retry-After, never a 500 or a 502; afterwards the node serves normally."""
    fed, server = pg_fed
    assert _exchange(fed).status_code == 200

    async def load() -> list[httpx.Response]:
        async with node_client(fed, TAX.member) as c:

            async def one() -> httpx.Response:
                return await c.get(f"/r1/{ADDRESS}", headers=_headers(fed))

            async def killer() -> None:
                for _ in range(5):
                    await asyncio.sleep(0.05)
                    await asyncio.to_thread(server.terminate_connections)

            results = await asyncio.gather(*(one() for _ in range(60)), killer())
            return [r for r in results if r is not None]

    answers = asyncio.run(load())
    statuses = {r.status_code for r in answers}
    assert statuses <= {200, 503}, [r.text for r in answers if r.status_code not in (200, 503)]
    for r in answers:
        if r.status_code == 503:
            # The node is consumer and provider at once on one database: a kill that hits the
            # provider's side reaches the caller as the consumer's ProviderUnavailable (503 with
            # the provider's Retry-After, docs/protocol.md §7); one that hits the consumer's own
            # work is its DatabaseError.
            _assert_unavailable(r, (DATABASE_ERROR, "Server.ServerProxy.ProviderUnavailable"))
    assert _exchange(fed).status_code == 200


def test_a_provider_node_answering_503_is_passed_on_as_503_with_its_retry_after(
    sqlite_fed: tuple[Federation, Path],
) -> None:
    """Not a 502: the provider is there and said when to come back (bounded, it is unsigned)."""
    from fastapi import FastAPI

    from exchange.web.problems import problem_response

    fed, _ = sqlite_fed
    unavailable = FastAPI()

    @unavailable.post("/x1/messages")
    async def messages() -> object:
        return problem_response(503, DATABASE_ERROR, "down", retry_after_s=7)

    fed.transport.apps["http://machida"] = unavailable
    r = _exchange(fed)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "Server.ServerProxy.ProviderUnavailable"
    assert r.headers["retry-after"] == "7"
