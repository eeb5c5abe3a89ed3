"""Replay protection (docs/protocol.md step 8).

A provider accepts each (sender, message id) once. Ids are persisted in the node's database (a
primary key, so two replicas racing on the same id cannot both accept it) and kept for longer than
the clock-skew window; anything older is refused by the skew check before it gets here, so pruning
never reopens a replay.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert
from sqlalchemy.exc import IntegrityError

from exchange.db import write_transaction
from exchange.errors import ReplayError
from exchange.store import SeenMessageRow

__all__ = ["ReplayGuard"]

RETENTION_FACTOR = 2  # keep ids twice as long as the skew window allows a message to live


class ReplayGuard:
    def __init__(self, engine: Engine, node: str, *, max_skew_s: int) -> None:
        self._engine = engine
        self._node = node
        self._retention = timedelta(seconds=max_skew_s * RETENTION_FACTOR + 60)

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

    def prune(self, *, now: datetime) -> int:
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(SeenMessageRow).where(
                    SeenMessageRow.node == self._node,
                    SeenMessageRow.seen_at < now - self._retention,
                )
            )
        return int(result.rowcount or 0)
