"""E-mail delivery of alerts through SMTP (RFC 5321), from the outbox the worker fills.

Concept (docs/alerts.md, "E-mail"): the worker writes an ``alert_emails`` row in the transaction
that stores the alert, so an alert the citizen wants by e-mail is never lost. ``EmailDelivery``
claims due rows (a lease: their next attempt is moved ahead first, so a second process leaves
them alone), sends each with ``smtplib`` outside any database transaction, then marks it sent; an
SMTP failure keeps the row and retries it with exponential backoff. A crash between sending and
marking sends it again after the lease: delivery is at least once, and the ``Message-ID`` (one
per alert) lets mail software drop the copy.

The message says which rule fired, the recipient's subsystem code, the time and the log entry:
never the citizen's subject or any data. Credentials come from a file named in the settings
(``ONCEONLY_SMTP_CREDENTIALS_FILE``: user on the first line, password on the second), never from
the command line.

Trust assumption: the SMTP server is the operator's relay; STARTTLS when configured.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from alerts.inbox import ALERT_COLUMNS, RULE_TEXT, describe
from alerts.store import AlertRow, EmailRow
from exchange.db import write_transaction
from exchange.errors import ConfigurationError

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "LEASE_S",
    "EmailDelivery",
    "SmtpMailer",
    "SmtpSettings",
    "compose",
]

LEASE_S = 120
"""How long a claimed e-mail is left to its sender before another attempt may take it."""
BACKOFF_BASE_S = 30
BACKOFF_MAX_S = 3600
BATCH = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_log = logging.getLogger("onceonly.alerts.mail")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "onceonly-alerts@localhost"
    starttls: bool = False
    credentials_file: Path | None = None
    timeout_s: float = 10.0
    domain: str = "onceonly.invalid"
    """The right-hand side of each message's ``Message-ID``."""

    def credentials(self) -> tuple[str, str] | None:
        if self.credentials_file is None:
            return None
        try:
            lines = self.credentials_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the SMTP credentials file {self.credentials_file}"
            ) from exc
        if len(lines) < 2 or not lines[0]:
            raise ConfigurationError(
                "the SMTP credentials file holds the user on its first line and the password on "
                "its second"
            )
        return lines[0], lines[1]


class SmtpMailer:
    """Sends one message per call through the configured SMTP server."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    def send(self, message: EmailMessage) -> None:
        s = self.settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            creds = s.credentials()
            if creds is not None:
                smtp.login(*creds)
            smtp.send_message(message)


def compose(alert: Any, to: str, sender: str, domain: str) -> EmailMessage:
    """The e-mail of one alert: both languages, no personal data beyond the address itself."""
    view = describe(alert)
    title_en, title_ja = RULE_TEXT.get(alert.rule, (alert.rule, alert.rule))
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"[onceonly] {title_ja} / {title_en}"
    msg["Message-ID"] = f"<alert-{alert.log_id.replace('/', '.')}-{alert.id}@{domain}>"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg.set_content(
        f"{view['text']['ja']}\n\n{view['text']['en']}\n\n"
        f"記録の証明はポータルの「アクセス記録」で確認できます。\n"
        f"The proof is in your access record in the portal (entry {view['entry_index']}, "
        f"leaf hash {view['leaf_hash']}).\n\n"
        "この通知の設定はポータルで変更できます。 You can change these alerts in the portal.\n"
    )
    return msg


class EmailDelivery:
    """Sends the due e-mails of the outbox (``run_once``)."""

    def __init__(self, engine: Engine, mailer: SmtpMailer) -> None:
        self._engine = engine
        self._mailer = mailer

    def run_once(self, now: datetime | None = None) -> int:
        """Send what is due; returns how many were sent (failures stay, for a later attempt)."""
        at = now or datetime.now(UTC)
        now_us = (at - _EPOCH) // _US
        with write_transaction(self._engine) as conn:
            due = conn.execute(
                select(EmailRow.id, EmailRow.next_attempt_us, EmailRow.attempts)
                .where(EmailRow.sent_us.is_(None), EmailRow.next_attempt_us <= now_us)
                .order_by(EmailRow.id)
                .limit(BATCH)
            ).all()
            claimed: list[tuple[int, int]] = []
            for email_id, old_next, attempts in due:
                # The lease: only the process that moves the attempt ahead sends it.
                if conn.execute(
                    update(EmailRow)
                    .where(EmailRow.id == email_id, EmailRow.next_attempt_us == old_next)
                    .values(next_attempt_us=now_us + LEASE_S * 1_000_000)
                ).rowcount:
                    claimed.append((int(email_id), int(attempts)))
        sent = 0
        for email_id, attempts in claimed:
            sent += self._send(email_id, attempts, now_us)
        return sent

    def _send(self, email_id: int, attempts: int, now_us: int) -> int:
        with self._engine.connect() as conn:
            email = conn.execute(
                select(EmailRow.alert_id, EmailRow.address).where(EmailRow.id == email_id)
            ).one()
            alert = conn.execute(select(ALERT_COLUMNS).where(AlertRow.id == email.alert_id)).one()
        s = self._mailer.settings
        try:
            self._mailer.send(compose(alert, email.address, s.sender, s.domain))
        except (OSError, smtplib.SMTPException) as exc:
            delay = min(BACKOFF_BASE_S * 2**attempts, BACKOFF_MAX_S)
            _log.warning(
                "alert e-mail %d not sent (%s); retry in %d s", email_id, type(exc).__name__, delay
            )
            with write_transaction(self._engine) as conn:
                conn.execute(
                    update(EmailRow)
                    .where(EmailRow.id == email_id)
                    .values(
                        attempts=attempts + 1,
                        next_attempt_us=now_us + delay * 1_000_000,
                        last_error=f"{type(exc).__name__}: {exc}"[:500],
                    )
                )
            return 0
        with write_transaction(self._engine) as conn:
            conn.execute(
                update(EmailRow)
                .where(EmailRow.id == email_id)
                .values(sent_us=now_us, attempts=attempts + 1, last_error=None)
            )
        return 1
