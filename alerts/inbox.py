"""The citizen's side of alerts: their inbox (list, mark read) and their settings.

Concept: a citizen is known here by the subject keys of every subject the log knows them by
(``alerts.worker.citizen_key``), computed from their token at each call, never sent by them; an
alert or setting of another citizen is indistinguishable from one that does not exist.
Settings are stored once per subject key, so the worker finds them from any entry about them.

Each alert is described in plain English and Japanese (``describe``): the rule, the recipient
(subsystem code), the time and the log entry (index and leaf hash) whose proof the citizen sees in
their record. Nothing else: no subject, no data.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from alerts.store import AlertRow, PreferenceRow
from exchange.db import write_transaction
from exchange.errors import NotFoundError
from policies.alerts import ALERT_RULES

__all__ = ["ALERT_COLUMNS", "MAX_ALERT_ID", "RULE_TEXT", "AlertInbox", "AlertSettings", "describe"]

MAX_ALERT_ID = 2**31 - 1
"""Alert ids are SQL integers (``alerts.id``): a larger id names no alert."""
ALERT_COLUMNS = AlertRow.__table__
"""Selected whole: rows with one attribute per column (``describe`` reads them)."""
JST = timezone(timedelta(hours=9), "JST")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RULE_TEXT: dict[str, tuple[str, str]] = {
    "read-without-consent": (
        "A private organisation read your data on a basis you did not consent to",
        "民間の事業者が、あなたの同意によらない根拠であなたの情報を照会しました",
    ),
    "new-recipient": (
        "An organisation read your data for the first time",
        "これまで照会のなかった機関があなたの情報を照会しました",
    ),
    "unusual-volume": (
        "Your data was read more often than usual",
        "あなたの情報がいつもより多く照会されました",
    ),
    "refused": (
        "A request for your data was refused",
        "あなたの情報の照会が拒否されました",
    ),
}
"""Each rule's title, in English and Japanese."""


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Which rules the citizen wants, and where to send e-mail (None: no e-mail)."""

    enabled: dict[str, bool]
    email: str | None


def describe(row: Any) -> dict[str, Any]:
    """One alert as the citizen sees it (no personal data)."""
    when = _EPOCH + timedelta(microseconds=int(row.time_us))
    title_en, title_ja = RULE_TEXT.get(row.rule, (row.rule, row.rule))
    who = row.client or "-"
    return {
        "id": int(row.id),
        "rule": row.rule,
        "recipient": row.client,
        "service": row.service,
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "entry_index": int(row.entry_index),
        "leaf_hash": base64.b64encode(bytes.fromhex(row.leaf_hash)).decode(),
        "read": bool(row.read),
        "text": {
            "en": f"{title_en}: {who}, on {when:%Y-%m-%d at %H:%M} UTC "
            f"(entry {int(row.entry_index)} of the access log).",
            "ja": f"{title_ja}：{who}、{when.astimezone(JST):%Y年%m月%d日 %H時%M分}（日本時間）"
            f"（アクセス記録 {int(row.entry_index)} 番）。",
        },
    }


class AlertInbox:
    """The alerts and settings of the citizens of one log (``log_id``) in ``engine``."""

    def __init__(self, engine: Engine, log_id: str) -> None:
        self._engine = engine
        self.log_id = log_id

    def list(
        self, keys: Collection[str], *, unread_only: bool = False, limit: int, before: int | None
    ) -> tuple[list[dict[str, Any]], int | None, int]:
        """Newest first: a page of alerts, the cursor of the next page, and the unread count."""
        if not keys:
            return [], None, 0
        mine = (AlertRow.log_id == self.log_id) & AlertRow.subject_key.in_(sorted(keys))
        stmt = select(ALERT_COLUMNS).where(mine)
        if unread_only:
            stmt = stmt.where(AlertRow.read.is_(False))
        if before is not None:
            stmt = stmt.where(AlertRow.id < min(before, MAX_ALERT_ID))
        stmt = stmt.order_by(AlertRow.id.desc()).limit(limit + 1)
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
            unread = conn.execute(
                select(func.count()).select_from(AlertRow).where(mine, AlertRow.read.is_(False))
            ).scalar_one()
        page = [describe(r) for r in rows[:limit]]
        return page, (int(rows[limit - 1].id) if len(rows) > limit else None), int(unread)

    def mark_read(self, keys: Collection[str], alert_id: int) -> dict[str, Any]:
        if not keys or not 0 <= alert_id <= MAX_ALERT_ID:
            raise NotFoundError("no such alert")
        with write_transaction(self._engine) as conn:
            done = conn.execute(
                update(AlertRow)
                .where(
                    AlertRow.log_id == self.log_id,
                    AlertRow.id == alert_id,
                    AlertRow.subject_key.in_(sorted(keys)),
                )
                .values(read=True)
            ).rowcount
            row = conn.execute(select(ALERT_COLUMNS).where(AlertRow.id == alert_id)).first()
        if not keys or not done or row is None:
            raise NotFoundError("no such alert")
        return describe(row)

    def settings(self, keys: Collection[str]) -> AlertSettings:
        disabled: set[str] = set()
        email: str | None = None
        if keys:
            with self._engine.connect() as conn:
                for off, address in conn.execute(
                    select(PreferenceRow.disabled, PreferenceRow.email).where(
                        PreferenceRow.log_id == self.log_id,
                        PreferenceRow.subject_key.in_(sorted(keys)),
                    )
                ):
                    disabled.update(r for r in str(off).split(",") if r)
                    email = email or address
        return AlertSettings({r: r not in disabled for r in ALERT_RULES}, email)

    def save_settings(
        self, keys: Collection[str], enabled: dict[str, bool], email: str | None
    ) -> AlertSettings:
        """Replace the citizen's settings (a rule left out keeps its current state)."""
        current = self.settings(keys)
        wanted = current.enabled | {r: bool(v) for r, v in enabled.items() if r in ALERT_RULES}
        disabled = ",".join(r for r in ALERT_RULES if not wanted[r])
        with write_transaction(self._engine) as conn:
            mine = (PreferenceRow.log_id == self.log_id) & PreferenceRow.subject_key.in_(
                sorted(keys)
            )
            conn.execute(delete(PreferenceRow).where(mine))
            for key in sorted(keys):
                conn.execute(
                    insert(PreferenceRow).values(
                        log_id=self.log_id, subject_key=key, disabled=disabled, email=email
                    )
                )
        return AlertSettings(wanted, email)
