"""Alert e-mails through a real SMTP server on loopback (aiosmtpd): delivered once, retried after
an SMTP failure without loss, and with no personal data in the message."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from alerts.mail import EmailDelivery, SmtpMailer, SmtpSettings
from alerts.store import EmailRow
from tests.alerts.conftest import ALICE, BOB, GAS, World, read

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
auth_result = pytest.importorskip("aiosmtpd.smtp").AuthResult


class _Inbox:
    """The SMTP server's handler: keeps every message it accepted."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    inbox = _Inbox()
    port = _free_port()
    controller = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _delivery(world: World, port: int) -> EmailDelivery:
    settings = SmtpSettings(host="127.0.0.1", port=port, sender="alerts@city.example")
    return EmailDelivery(world.engine, SmtpMailer(settings))


def test_an_alert_is_mailed_once_with_no_personal_data(
    world: World, smtp: tuple[_Inbox, int]
) -> None:
    inbox, port = smtp
    world.inbox().save_settings({world.key(ALICE)}, {"new-recipient": False}, "alice@mail.example")
    world.log.append_many([read(0, client=GAS), read(1, client=GAS, subject=BOB)])
    world.worker().run_once()
    delivery = _delivery(world, port)
    assert (
        delivery.run_once() == 1
    )  # one alert for Alice (new-recipient is off); Bob gave no address
    assert delivery.run_once() == 0  # sent once, never again
    assert world.worker().run_once() == 0
    assert delivery.run_once(datetime.now(UTC) + timedelta(days=1)) == 0
    assert len(inbox.messages) == 1
    assert inbox.envelopes == [("alerts@city.example", ["alice@mail.example"])]
    msg = inbox.messages[0]
    text = msg.get_content()
    assert GAS in text
    assert "entry 0" in text
    assert "アクセス記録" in text
    raw = msg.as_string() + text
    for secret in (ALICE, world.key(ALICE), BOB):
        assert secret not in raw
    assert msg["Message-ID"].startswith("<alert-")


def test_an_smtp_failure_is_retried_without_loss(world: World, smtp: tuple[_Inbox, int]) -> None:
    inbox, port = smtp
    world.inbox().save_settings({world.key(ALICE)}, {}, "alice@mail.example")
    world.log.append_many([read(0, client=GAS)])
    world.worker().run_once()
    now = datetime.now(UTC)
    # the relay is down: nothing is sent, both e-mails stay with a later attempt
    assert _delivery(world, _free_port()).run_once(now) == 0
    with world.engine.connect() as conn:
        rows = conn.execute(select(EmailRow.attempts, EmailRow.sent_us)).all()
    assert sorted(tuple(r) for r in rows) == [(1, None), (1, None)]
    assert _delivery(world, port).run_once(now) == 0  # not due yet (backoff)
    assert _delivery(world, port).run_once(now + timedelta(minutes=5)) == 2
    assert len(inbox.messages) == 2
    assert {m["Subject"] for m in inbox.messages} == {
        "[onceonly] 民間の事業者が、あなたの同意によらない根拠であなたの情報を照会しました / "
        "A private organisation read your data on a basis you did not consent to",
        "[onceonly] これまで照会のなかった機関があなたの情報を照会しました / "
        "An organisation read your data for the first time",
    }


def test_a_disabled_rule_is_not_mailed(world: World, smtp: tuple[_Inbox, int]) -> None:
    inbox, port = smtp
    world.inbox().save_settings(
        {world.key(ALICE)},
        {"read-without-consent": False, "new-recipient": False},
        "alice@mail.example",
    )
    world.log.append_many([read(0, client=GAS)])
    world.worker().run_once()
    assert _delivery(world, port).run_once() == 0
    assert inbox.messages == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_the_relay_login_uses_the_credentials_file(world: World, tmp_path: Path) -> None:
    inbox = _Inbox()
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append((data.login, data.password))
        return auth_result(success=data.login == b"alerts" and data.password == b"pw-1")

    port = _free_port()
    controller = aiosmtpd_controller.Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=False,  # loopback only; STARTTLS is the operator's switch
    )
    controller.start()
    try:
        world.inbox().save_settings({world.key(ALICE)}, {}, "alice@mail.example")
        world.log.append_many([read(0)])
        world.worker().run_once()
        creds = tmp_path / "smtp.credentials"
        creds.write_text("alerts\nwrong\n")
        settings = SmtpSettings(host="127.0.0.1", port=port, credentials_file=creds)
        assert EmailDelivery(world.engine, SmtpMailer(settings)).run_once() == 0
        creds.write_text("alerts\npw-1\n")
        later = datetime.now(UTC) + timedelta(minutes=5)
        assert EmailDelivery(world.engine, SmtpMailer(settings)).run_once(later) == 1
    finally:
        controller.stop()
    assert logins == [(b"alerts", b"wrong"), (b"alerts", b"pw-1")]
    assert len(inbox.messages) == 1
