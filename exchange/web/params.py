"""Bounds on what a caller sends in a query or a path: integers, and times.

Python integers are unbounded; the databases behind the routes store 64-bit ones, and SQLite's
driver raises ``OverflowError`` on anything larger — a 500 a caller could cause. Every integer
parameter is therefore declared with ``le=MAX_INT64`` (and a lower bound), so an out-of-range value
is a 400 problem+json before any query runs.

A time in a query is an RFC 3339 date-time with its offset (``Rfc3339Time``), as the documents
declare it (``format: date-time``): left to itself pydantic would also take a number as a Unix
time, or a time without an offset, which the route could only guess the zone of.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["MAX_INT64", "Rfc3339Time"]

MAX_INT64 = 2**63 - 1
"""The largest value a signed 64-bit SQL integer (SQLite INTEGER, PostgreSQL BIGINT) holds."""

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)


def _rfc3339(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("an RFC 3339 date-time with its offset is required")
    if not _RFC3339.match(value):
        raise ValueError("an RFC 3339 date-time with its offset is required (2026-11-23T09:00:00Z)")
    return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))


Rfc3339Time = Annotated[datetime, BeforeValidator(_rfc3339)]
"""A timezone-aware time from ``2026-11-23T09:00:00Z`` or ``…+09:00``; anything else is a 400."""
