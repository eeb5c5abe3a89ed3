"""The append path's fast serialisation of entries is byte for byte what it replaced: RFC 8785
canonical JSON of the record, and the one RFC 3339 time format (UTC, microseconds, ``Z``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.log import entry_bytes, entry_record, format_time
from exchange.canonical import canonical_json
from exchange.ports import AuditEvent
from tests.audit.audit_factories import make_event

TIMES = [
    datetime(2026, 11, 23, 9, 30, 1, 5, tzinfo=UTC),
    datetime(2026, 11, 23, 9, 30, tzinfo=ZoneInfo("Asia/Tokyo")),
    datetime(2026, 3, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC")),
    datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1000, 1, 1, tzinfo=timezone(timedelta(hours=1))),
]


@pytest.mark.parametrize("t", TIMES)
def test_format_time_is_utc_microseconds_z(t: datetime) -> None:
    assert format_time(t) == t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_format_time_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        format_time(datetime(2026, 1, 1))


_text = st.text(st.characters(codec="utf-8"), max_size=12)


@given(
    purpose=_text,
    basis=st.none() | _text,
    extra=st.dictionaries(_text, _text, max_size=3),
    minutes=st.integers(0, 10**6),
)
def test_entry_bytes_are_the_canonical_json_of_the_record(
    purpose: str, basis: str | None, extra: dict[str, str], minutes: int
) -> None:
    base = make_event(minutes)
    event = AuditEvent(
        time=base.time + timedelta(minutes=minutes),
        node=base.node,
        kind=base.kind,
        decision=base.decision,
        client=base.client,
        service=base.service,
        purpose=purpose,
        subject=base.subject,
        basis=basis,
        extra=extra,
    )
    assert entry_bytes(event) == canonical_json(entry_record(event))
