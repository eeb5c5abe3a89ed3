"""The search columns of an audit entry, derived from its signed bytes and never trusted on their own.

Concept: an entry's leaf is the canonical JSON of its event; the database also keeps copies of a
few fields (``time_us``, ``node``, ``kind``, ``decision``, ``client``, ``service``, ``purpose``,
``subject``, ``consent_id``, ``message_id``) in plain columns so that searches are index lookups.
Those copies are outside the Merkle tree: an operator who rewrote ``subject`` on one row would hide
that entry from its citizen's view while every proof still checked. So the copies are *derived* —
``index_columns`` is the one definition, used when an entry is written, when a search answers
from the columns, and by ``onceonly audit verify`` on an export — and any disagreement is a
verification failure that names the entry (``column_mismatch``).

Trust assumption: only the entry's bytes are covered by the signed checkpoints; the columns are
whatever the database holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "INDEX_COLUMNS",
    "column_mismatch",
    "columns_json",
    "implied_columns",
    "index_columns",
    "time_column",
]


INDEX_COLUMNS = (
    "time_us",
    "node",
    "kind",
    "decision",
    "client",
    "service",
    "purpose",
    "subject",
    "consent_id",
    "message_id",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def time_column(value: Any) -> int | None:
    """Microseconds since the epoch of an entry's RFC 3339 ``time``; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    return (t - _EPOCH) // _US


_TEXT_COLUMNS = INDEX_COLUMNS[1:]


def index_columns(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The column values an entry with this record must have, in ``INDEX_COLUMNS`` order."""
    get = record.get
    texts = [v if isinstance(v := get(name), str) else None for name in _TEXT_COLUMNS]
    return (time_column(get("time")), *texts)


def implied_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """``columns_json(index_columns(record))`` built in one pass (the verifier's per-entry form)."""
    get = record.get
    out: dict[str, Any] = {"time_us": time_column(get("time"))}
    for name in _TEXT_COLUMNS:
        value = get(name)
        out[name] = value if isinstance(value, str) else None
    return out


def column_mismatch(record: Mapping[str, Any], stored: Sequence[Any]) -> str | None:
    """The first column whose stored value differs from the one the record implies, or None."""
    for name, want, have in zip(INDEX_COLUMNS, index_columns(record), stored, strict=True):
        if want != have:
            return name
    return None


def columns_json(stored: Sequence[Any]) -> dict[str, Any]:
    """The stored columns as the JSON object an export line carries."""
    return dict(zip(INDEX_COLUMNS, stored, strict=True))
