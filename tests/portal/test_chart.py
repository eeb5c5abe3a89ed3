"""The auditor chart counts each exchange once, by its outcome."""

from __future__ import annotations

from typing import Any

from portal.chart import build_chart


def _entry(kind: str, decision: str, message_id: str | None, client: str = "JP/GOV/1/tax") -> Any:
    record = {"kind": kind, "decision": decision, "client": client, "time": "2026-11-20T01:00:00Z"}
    if message_id:
        record["message_id"] = message_id
    return record


def _totals(records: list[Any]) -> dict[str, tuple[int, int]]:
    chart = build_chart(records, label=lambda **kw: "")
    return {o.org: (o.allowed, o.refused) for o in chart.orgs}


def test_one_exchange_logged_by_both_nodes_counts_once_and_request_records_do_not_count() -> None:
    records = [
        _entry("request", "info", "m1"),  # consumer: sent
        _entry("response", "allow", "m1"),  # provider: answered
        _entry("response", "allow", "m1"),  # consumer: verified and returned
        _entry("request", "info", "m2"),
        _entry("refusal", "deny", "m2"),  # provider refused
        _entry("response", "deny", "m2"),  # consumer got the signed refusal
        _entry("refusal", "deny", None),  # refused at the consumer before sending (no id)
        _entry("refusal", "deny", None),
    ]
    assert _totals(records) == {"JP/GOV/1/tax": (1, 3)}


def test_a_request_alone_is_no_outcome() -> None:
    assert _totals([_entry("request", "info", "m1")]) == {}
