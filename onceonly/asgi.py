"""ASGI application factories for process managers (``uvicorn --factory``, ``--workers N``).

Each worker process builds its own app from the environment (``ONCEONLY_*``, ``DATABASE_URL``),
as ``onceonly node --workers N`` arranges: replicas of one member's node in one process group share
the listening socket, the data directory (keys, the log's note key) and the database. On
PostgreSQL that is the supported way to use several cores; on SQLite the workers take turns at
the file (busy timeout), which works but does not scale writes.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from exchange.errors import ConfigurationError
from exchange.identifiers import MemberId
from exchange.node.app import create_node_app
from exchange.settings import Settings
from onceonly.wiring import build_node_parts, start_up_report

__all__ = ["NODE_MEMBER_ENV", "node_app"]

NODE_MEMBER_ENV = "ONCEONLY_NODE_MEMBER"
"""The member a node worker serves (set by ``onceonly node``; e.g. ``JP/GOV/132098``)."""


def node_app() -> FastAPI:
    """One worker's node app (``uvicorn onceonly.asgi:node_app --factory``)."""
    member = os.environ.get(NODE_MEMBER_ENV)
    if not member:
        raise ConfigurationError(
            f"{NODE_MEMBER_ENV} is not set: which member does this node serve?"
        )
    settings = Settings()
    mid = MemberId.parse(member)
    with start_up_report():
        return create_node_app(settings, mid, build_node_parts(settings, mid))
