"""Bounds on the integers a caller sends in a query or a path.

Python integers are unbounded; the databases behind the routes store 64-bit ones, and SQLite's
driver raises ``OverflowError`` on anything larger — a 500 a caller could cause. Every integer
parameter is therefore declared with ``le=MAX_INT64`` (and a lower bound), so an out-of-range value
is a 400 problem+json before any query runs.
"""

from __future__ import annotations

__all__ = ["MAX_INT64"]

MAX_INT64 = 2**63 - 1
"""The largest value a signed 64-bit SQL integer (SQLite INTEGER, PostgreSQL BIGINT) holds."""
