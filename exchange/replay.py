"""Replay protection (docs/protocol.md step 8).

A provider accepts each (sender, message id) once. Ids are persisted in the node's database (a
primary key, so two replicas racing on the same id cannot both accept it) and kept for longer than
the clock-skew window; anything older is refused by the skew check before it gets here, so pruning
never reopens a replay.

Under load the provider batches its ids (``remember_async``): one transaction per batch, whose
``INSERT … ON CONFLICT DO NOTHING`` tells which ids were new (``RETURNING`` on PostgreSQL, the row
count of each insert on SQLite). The primary key still decides, so two replicas — or two messages
with one id in the same batch — cannot both be accepted. On PostgreSQL the batch is ONE statement
(rows passed as arrays, ``unnest``) sent in autocommit: atomic on its own, committed when its
answer arrives, one round trip instead of three (``BEGIN``, ``INSERT``, ``COMMIT``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from exchange.db import driver_cursor, read_cursor, runs_inline, write_transaction
from exchange.errors import ReplayError
from exchange.group_commit import GroupCommit
from exchange.store import SeenMessageRow

__all__ = ["ReplayGuard"]

RETENTION_FACTOR = 2  # keep ids twice as long as the skew window allows a message to live

# PostgreSQL: a whole batch in one statement, so that autocommit makes it one atomic round trip
_INSERT_NEW_PG = (
    "INSERT INTO xchg_seen_messages (node, sender, message_id, seen_at) "
    "SELECT %s, s, m, t FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS u(s, m, t) "
    "ON CONFLICT DO NOTHING RETURNING sender, message_id"
)


class ReplayGuard:
    def __init__(
        self, engine: Engine, node: str, *, max_skew_s: int, inline: bool | None = None
    ) -> None:
        self._engine = engine
        self._node = node
        self._retention = timedelta(seconds=max_skew_s * RETENTION_FACTOR + 60)
        self._group: GroupCommit[tuple[str, str, datetime], bool] = GroupCommit(
            self.remember_many, inline=runs_inline(engine) if inline is None else inline
        )
        table = SeenMessageRow.__table__
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert_new: Any = (
            dialect.insert(table)
            .on_conflict_do_nothing()
            .returning(table.c.sender, table.c.message_id)
        )
        # SQLite: the same statement straight to the driver, one row at a time (microseconds
        # each, in-process), its row count telling whether the row was new.
        self._sqlite = engine.dialect.name == "sqlite"
        self._seen_at: Any = table.c.seen_at.type.bind_processor(engine.dialect) or (lambda v: v)

    def remember(self, sender: str, message_id: str, *, now: datetime) -> None:
        """Record the id, or raise ``ReplayError`` if it was seen before (stops replays)."""
        try:
            with write_transaction(self._engine) as conn:
                conn.execute(
                    insert(SeenMessageRow).values(
                        node=self._node, sender=sender, message_id=message_id, seen_at=now
                    )
                )
        except IntegrityError as exc:
            raise ReplayError("message id already used") from exc

    async def remember_async(self, sender: str, message_id: str, *, now: datetime) -> None:
        """``remember`` batched with the other messages arriving meanwhile."""
        if not await self._group.submit((sender, message_id, now)):
            raise ReplayError("message id already used")

    def remember_many(self, seen: Sequence[tuple[str, str, datetime]]) -> list[bool]:
        """Record (sender, message id, time) triples in one transaction; True where new."""
        first: dict[tuple[str, str], int] = {}
        rows = []
        for i, (sender, message_id, now) in enumerate(seen):
            if (sender, message_id) not in first:
                first[(sender, message_id)] = i
                rows.append(
                    {"node": self._node, "sender": sender, "message_id": message_id, "seen_at": now}
                )
        if self._sqlite:
            with write_transaction(self._engine) as conn:
                new = self._insert_sqlite(conn, rows)
        elif self._engine.dialect.name == "postgresql":
            new = self._insert_postgres(rows)
        else:  # pragma: no cover - the two databases the project runs on are handled above
            with write_transaction(self._engine) as conn:
                new = {tuple(r) for r in conn.execute(self._insert_new, rows)}
        return [
            first[(sender, message_id)] == i and (sender, message_id) in new
            for i, (sender, message_id, _) in enumerate(seen)
        ]

    def _insert_postgres(self, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        """One statement in autocommit: committed (durably, ``synchronous_commit`` as the
        server has it) before its answer, which lists the rows that were new."""
        with read_cursor(self._engine) as cur:
            cur.execute(
                _INSERT_NEW_PG,
                (
                    self._node,
                    [r["sender"] for r in rows],
                    [r["message_id"] for r in rows],
                    [r["seen_at"] for r in rows],
                ),
                prepare=True,
            )
            return {tuple(r) for r in cur.fetchall()}

    def _insert_sqlite(self, conn: Any, rows: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        new: set[tuple[Any, ...]] = set()
        with driver_cursor(conn) as cur:
            for r in rows:
                cur.execute(
                    "INSERT INTO xchg_seen_messages (node, sender, message_id, seen_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (r["node"], r["sender"], r["message_id"], self._seen_at(r["seen_at"])),
                )
                if cur.rowcount == 1:
                    new.add((r["sender"], r["message_id"]))
        return new

    def prune(self, *, now: datetime) -> int:
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(SeenMessageRow).where(
                    SeenMessageRow.node == self._node,
                    SeenMessageRow.seen_at < now - self._retention,
                )
            )
        return int(result.rowcount or 0)
