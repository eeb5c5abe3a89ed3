"""Exchanges and refusals over time, by organisation: the geometry of a server-rendered SVG chart.

Issue 8 "For auditors": charts without external JavaScript. This module only counts and lays out
bars (one small chart per organisation, one day per slot, allowed and refused side by side); the
template draws them as inline SVG, escaping every label. Trust assumption: the records come from
the operator's own transparency logs; organisation names are untrusted text and only ever escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

__all__ = ["MAX_DAYS", "MAX_ORGS", "Bar", "Chart", "OrgChart", "build_chart"]

MAX_DAYS = 31
MAX_ORGS = 12
WIDTH_PX = 640
HEIGHT_PX = 120
SLOT_GAP_PX = 4


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    refused: bool
    label: str


@dataclass(frozen=True, slots=True)
class OrgChart:
    org: str
    allowed: int
    refused: int
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    days: tuple[date, ...]
    orgs: tuple[OrgChart, ...]
    max_count: int
    width: int = WIDTH_PX
    height: int = HEIGHT_PX


def _day(record: Mapping[str, Any]) -> date | None:
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def build_chart(records: Iterable[Mapping[str, Any]], *, label: Any) -> Chart:
    """Lay out exchanges per organisation (the client) and day: allowed and refused.

    An exchange is counted once by its outcome: a ``response`` entry (allowed when its decision is
    ``allow``) or a ``refusal``. Both nodes of an exchange log its outcome under the same message
    id, so entries are merged by message id, a refusal on either side winning. ``request`` entries
    (the consumer's "sent" record, decision ``info``) are not outcomes and are not counted.
    ``label(org=…, day=…, allowed=…, refused=…)`` gives each bar's accessible title. Only the last
    ``MAX_DAYS`` days with data and the ``MAX_ORGS`` busiest organisations are drawn.
    """
    outcomes: dict[object, tuple[str, date, bool]] = {}
    for n, record in enumerate(records):
        org, day, kind = record.get("client"), _day(record), record.get("kind")
        if not isinstance(org, str) or day is None or kind not in ("response", "refusal"):
            continue
        refused = kind == "refusal" or record.get("decision") != "allow"
        key = record.get("message_id") or ("entry", n)  # a refusal before sending has no id
        seen = outcomes.get(key)
        outcomes[key] = (org, day, refused or (seen is not None and seen[2]))
    counts: Counter[tuple[str, date, bool]] = Counter(outcomes.values())
    per_org: Counter[str] = Counter()
    for (org, _, _), n in counts.items():
        per_org[org] += n
    days = tuple(sorted({d for _, d, _ in counts})[-MAX_DAYS:])
    orgs = [org for org, _ in per_org.most_common(MAX_ORGS)]
    max_count = max((n for (_, d, _), n in counts.items() if d in days), default=0)
    charts: list[OrgChart] = []
    slot = (WIDTH_PX / len(days)) if days else WIDTH_PX
    bar_w = max((slot - SLOT_GAP_PX) / 2, 1.0)
    for org in sorted(orgs):
        bars: list[Bar] = []
        total_a = total_r = 0
        for i, day in enumerate(days):
            allowed, refused = counts[(org, day, False)], counts[(org, day, True)]
            total_a += allowed
            total_r += refused
            title = label(org=org, day=day.isoformat(), allowed=allowed, refused=refused)
            for j, n in enumerate((allowed, refused)):
                if n == 0:
                    continue
                h = HEIGHT_PX * n / max_count
                bars.append(Bar(i * slot + j * bar_w, HEIGHT_PX - h, bar_w, h, j == 1, title))
        charts.append(OrgChart(org, total_a, total_r, tuple(bars)))
    return Chart(days, tuple(charts), max_count)
