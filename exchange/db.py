"""Database engines and migrations shared by every component.

SQLite (one file per component in the data directory) by default, PostgreSQL through
``DATABASE_URL``. Every package keeps its own tables (in its ``store.py``, prefixed with the
package's name) and its own Alembic branch (labelled with the package's name) in
``<package>/migrations/versions``. Each component migrates only its own branches
(``upgrade(engine, ("exchange", "audit"))`` for a node's database): a node's database holds no
consent or procedure tables. On PostgreSQL an advisory lock serialises replicas that start at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from exchange.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from exchange.settings import Settings

__all__ = [
    "DATABASE_ERRORS",
    "MIGRATING_PACKAGES",
    "as_unavailable",
    "as_utc",
    "check_database",
    "database_url",
    "driver_cursor",
    "is_postgres",
    "make_engine",
    "normalise_url",
    "read_cursor",
    "sqlite_writer_turn",
    "upgrade",
    "write_transaction",
]

MIGRATING_PACKAGES = (
    "exchange",
    "audit",
    "consent",
    "policies",
    "adapters",
    "procedures",
    "portal",
    "alerts",
)
SQLITE_BUSY_TIMEOUT_MS = 10_000
# A pooled PostgreSQL connection idle longer than this is pinged (one round trip) before use;
# younger ones are only checked locally (``_check_alive``).
PING_AFTER_IDLE_S = 30.0
_MIGRATION_LOCK_KEY = 0x0CE0_0CE0


def advisory_lock_key(namespace: str, name: str) -> int:
    """A PostgreSQL advisory lock's key for ``name`` (a log's id, say): a signed 64-bit integer
    from SHA-256 over the namespace and the name, so that locks of different purposes never meet
    (two names sharing a key only wait for each other)."""
    digest = hashlib.sha256(f"onceonly.{namespace}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware datetime: SQLite hands back naive ones (stored in UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy's default driver is psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def is_postgres(url: str) -> bool:
    return make_url(normalise_url(url)).get_backend_name() == "postgresql"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the settings this project relies on (WAL + busy timeout on SQLite)."""
    url = normalise_url(url)
    if is_postgres(url):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, **kwargs)
        if not kwargs.get("pool_pre_ping"):
            event.listen(engine, "checkout", _check_alive)
            event.listen(engine, "checkin", _note_idle_since)
        return engine
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _note_idle_since(_dbapi_conn: Any, record: Any) -> None:
    if record is not None:
        record.info["idle_since"] = time.monotonic()


def _check_alive(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Hand out only live PostgreSQL connections, without a round trip for busy ones.

    SQLAlchemy's ``pool_pre_ping`` sends ``SELECT 1`` on every checkout: on a node that is a
    fifth of the database time of an exchange (docs/performance.md). An idle connection in good
    order has nothing to read; a server that terminated it (``pg_terminate_backend``, restart)
    has sent an error and closed the socket, which makes it readable. So a readable or closed
    socket means a dead connection (the pool replaces it: ``DisconnectionError``), and only a
    connection idle longer than ``PING_AFTER_IDLE_S`` — which a silent network could have cut —
    is pinged."""
    pgconn = getattr(dbapi_conn, "pgconn", None)
    if pgconn is None:  # not psycopg 3: ping as pool_pre_ping would
        _ping(dbapi_conn)
        return
    try:
        if dbapi_conn.closed or dbapi_conn.broken:
            raise sa_exc.DisconnectionError("the connection is closed")
        readable, _, _ = select.select([pgconn.socket], [], [], 0)
    except (OSError, ValueError) as exc:
        raise sa_exc.DisconnectionError("the connection's socket is unusable") from exc
    if readable:
        raise sa_exc.DisconnectionError("the server closed or reported on the connection")
    idle_since = record.info.get("idle_since") if record is not None else None
    if idle_since is None or time.monotonic() - idle_since > PING_AFTER_IDLE_S:
        _ping(dbapi_conn)


def _ping(dbapi_conn: Any) -> None:
    try:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SELECT 1")
        finally:
            cur.close()
        if not getattr(dbapi_conn, "autocommit", True):
            dbapi_conn.rollback()
    except Exception as exc:
        raise sa_exc.DisconnectionError("the connection did not answer a ping") from exc


_R = TypeVar("_R")

# DB-API errors that say a statement or its data is wrong, not that the database is unusable.
_SQLITE_NOT_UNAVAILABLE = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    sqlite3.NotSupportedError,
)


def _database_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [sa_exc.SQLAlchemyError, sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


DATABASE_ERRORS = _database_errors()
"""Every exception class a database call may raise (SQLAlchemy's, and the drivers' own)."""


def _driver_unavailable(exc: BaseException) -> bool:
    """A raw driver error (``driver_cursor`` work is not wrapped by SQLAlchemy)."""
    if isinstance(exc, sqlite3.DatabaseError):
        # OperationalError (locked, disk I/O, no such table) and the bare DatabaseError of a
        # file that is not a database or is malformed.
        return not isinstance(exc, _SQLITE_NOT_UNAVAILABLE)
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _is_unavailability(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True  # the pool could not hand out a working connection in time
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return _driver_unavailable(exc.orig) if exc.orig is not None else False
    return _driver_unavailable(exc)


def as_unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The one mapping of "the database cannot be used right now" (docs/operator.md "Faults").

    Connection lost or terminated (``pg_terminate_backend``), server refusing connections, pool
    exhausted, an unreadable or corrupted SQLite file: a ``DatabaseUnavailable`` (503 with
    ``Retry-After``). Errors of a statement or its data (integrity, programming) are bugs or
    conflicts and stay what they are (``None``). Looks through ``raise … from`` chains."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DatabaseUnavailable):
            return current
        if _is_unavailability(current):
            unavailable = DatabaseUnavailable("the database is unavailable; retry later")
            unavailable.__cause__ = current
            return unavailable
        seen.add(id(current))
        current = current.__cause__
    return None


def check_database(engine: Engine) -> None:
    """A cheap query that proves the database answers (readiness); raises ``DatabaseUnavailable``.

    On SQLite ``SELECT 1`` never reads the file, so the schema is read too: a corrupted file fails
    here, not only on the next real request."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if engine.dialect.name == "sqlite":
                conn.execute(text("SELECT count(*) FROM sqlite_master"))
    except Exception as exc:
        unavailable = as_unavailable(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def runs_inline(*engines: Engine, mode: str = "auto") -> bool:
    """Whether blocking work on these databases is best run on the event loop itself.

    SQLite work is CPU work in this process (no network, no fsync with WAL + synchronous=NORMAL):
    a worker thread adds no parallelism under the GIL, only hand-offs — measured, the event loop
    then waits for the GIL behind the worker threads and a node did 40 % fewer exchanges per
    second (docs/performance.md). PostgreSQL work waits on round trips, so by default (``mode``
    ``auto``) it goes to threads; ``Settings.db_work`` (``inline`` / ``threads``) overrides."""
    if mode == "inline":
        return True
    if mode == "threads":
        return False
    return all(e.dialect.name == "sqlite" for e in engines)


@contextlib.contextmanager
def driver_cursor(conn: Connection) -> Iterator[Any]:
    """A DB-API cursor on ``conn``'s driver connection, inside the transaction ``conn`` holds: for
    the hot paths where SQLAlchemy's per-statement work costs more than the statement itself."""
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cur
    finally:
        cur.close()


@contextlib.contextmanager
def read_cursor(engine: Engine) -> Iterator[Any]:
    """A driver cursor on a pooled connection for reads that need no transaction.

    On PostgreSQL the connection is in autocommit mode while it is lent: no ``BEGIN`` before the
    statement, no ``ROLLBACK`` after it, so a one-statement read is one round trip. For
    statements whose results need no common snapshot (immutable rows, or one statement). A
    connection the driver found broken is discarded, not returned to the pool."""
    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    postgres = engine.dialect.name == "postgresql"
    try:
        if postgres:
            driver.autocommit = True  # type: ignore[union-attr]
        cur = driver.cursor()  # type: ignore[union-attr]
        try:
            yield cur
        finally:
            cur.close()
        if postgres:
            driver.autocommit = False  # type: ignore[union-attr]
    except BaseException as exc:
        if _driver_unavailable(exc):
            pooled.invalidate(exc if isinstance(exc, Exception) else None)
        elif postgres:
            try:
                driver.autocommit = False  # type: ignore[union-attr]
            except Exception:  # mid-result or broken: never lend it out in autocommit mode
                pooled.invalidate()
        raise
    finally:
        pooled.close()


async def finishing_thread(fn: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
    """``asyncio.to_thread`` for background jobs: cancelled (a shutdown), it still waits for the
    thread's call to end before the cancellation goes on, so no database connection is left
    checked out of a pool that the shutdown then disposes of (it would be collected open)."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def run_blocking(inline: bool, fn: Callable[..., _R], *args: Any) -> _R:
    """``fn(*args)`` on the loop when ``inline`` (see ``runs_inline``), else in a worker thread."""
    if inline:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


_SQLITE_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def sqlite_writer_turn(engine: Engine) -> Iterator[None]:
    """Writers of one SQLite file in this process take turns (a no-op on PostgreSQL).

    SQLite allows one writer at a time; threads that collide get SQLITE_BUSY and its busy handler
    sleeps for milliseconds. Queueing on a lock instead costs microseconds."""
    if engine.dialect.name != "sqlite":
        yield
        return
    with _LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.setdefault(engine, threading.Lock())
    with lock:
        yield


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Any]:
    """``engine.begin()`` taken in turn with the process's other writers of the same file."""
    with sqlite_writer_turn(engine), engine.begin() as conn:
        yield conn


def _version_locations() -> list[str]:
    found: list[str] = []
    for pkg in MIGRATING_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            continue
        versions = Path(spec.origin).parent / "migrations" / "versions"
        if versions.is_dir() and any(versions.glob("*.py")):
            found.append(str(versions))
    return found


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("version_locations", " ".join(_version_locations()))
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["engine"] = engine
    return cfg


def database_url(settings: Settings, component: str) -> str:
    """A component's database: PostgreSQL when configured; else one SQLite file per component in
    the data directory."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{(settings.data_dir / f'{component}.sqlite').resolve()}"


def upgrade(engine: Engine, branches: Sequence[str] | None = None) -> None:
    """Apply the named packages' migrations (``alembic upgrade <branch>@head`` each), or every
    package's (``heads``) when ``branches`` is None: tools and tests that hold every table."""
    cfg = alembic_config(engine)
    targets = ["heads"] if branches is None else [f"{b}@head" for b in branches]
    unknown = set(branches or ()) - set(MIGRATING_PACKAGES)
    if unknown:
        raise ValueError(f"no migration branch named {sorted(unknown)}")
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            try:
                cfg.attributes["connection"] = conn
                for target in targets:
                    command.upgrade(cfg, target)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                conn.commit()
    else:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            for target in targets:
                command.upgrade(cfg, target)
