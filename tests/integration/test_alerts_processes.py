"""Alerts end to end with real processes (issue 15 item 6): a central server and two nodes
(Machida, the gas company) with their alert workers on, e-mail through a real SMTP server on
loopback (aiosmtpd). A statute-based read by the tax office raises "new recipient" at Machida's
node once; a refused read by the gas company raises "refused" at the gas company's node; the same
read with the citizen's consent raises nothing. The citizen sets an e-mail address through their
node's API and receives one e-mail per alert, with no code of theirs in it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.pseudonyms import PseudonymService
from exchange.db import make_engine
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from onceonly.wiring import PSEUDONYMS, registry_database_url
from tests.integration.processes import Cluster, provisioned_cluster, running
from tests.integration.test_nodes_as_processes import (
    ADDRESS,
    GAS,
    GAS_CLIENT,
    MACHIDA,
    TAX,
    _gas_code,
    _subject,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
EMAIL = "citizen@mail.example"


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def world(
    tmp_path: Path, db_url: str
) -> Iterator[tuple[Cluster, dict[str, str], Settings, _Mailbox]]:
    mailbox = _Mailbox()
    port = _free_port()
    smtp = aiosmtpd_controller.Controller(mailbox, hostname="127.0.0.1", port=port)
    smtp.start()
    c, settings, api_keys = provisioned_cluster(
        tmp_path / "data",
        (MACHIDA, GAS),
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=20,
        env={
            "ONCEONLY_REGISTRY_REFRESH_S": "1",
            "ONCEONLY_ALERTS_INTERVAL_S": "0.3",
            "ONCEONLY_SMTP_HOST": "127.0.0.1",
            "ONCEONLY_SMTP_PORT": str(port),
            "ONCEONLY_SMTP_FROM": "alerts@onceonly.example",
        },
    )
    gen = running(c)
    cl = next(gen)
    for p in cl.procs.values():
        p.start()
    try:
        yield cl, api_keys, settings, mailbox
    finally:
        gen.close()
        smtp.stop()


def _citizen(settings: Settings) -> str:
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        return PseudonymService(store, (TAX, CITIZEN_AGENCY)).translate(
            _subject(settings), TAX, CITIZEN_AGENCY
        )
    finally:
        store.dispose()


def _read(url: str, client: str, key: str, subject: str, purpose: str, **extra: str) -> str:
    r = httpx.get(
        f"{url}/r1/{ADDRESS}",
        headers={
            "X-Road-Client": client,
            "X-OnceOnly-Api-Key": key,
            "X-OnceOnly-Purpose": purpose,
            "X-OnceOnly-Subject": subject,
            **extra,
        },
        timeout=20,
    )
    return f"{r.status_code} {r.text[:300]}"


def _consent(c: Cluster, key: str, gas_code: str, token: str) -> dict[str, str]:
    now = datetime.now(UTC)
    terms = {
        "subject": gas_code,
        "subject_agency": "client",
        "client": GAS_CLIENT,
        "services": [ADDRESS.rsplit("/", 1)[0]],
        "purpose": {"code": "address-change", "text_ja": "ガスの住所変更", "text_en": "gas move"},
        "fields": ["address", "moved_in_on"],
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        "mode": "one-time",
        "data_retention_days": 30,
        "legal_text_version": "2026-11",
    }
    asked = httpx.post(
        f"{c.procs[str(GAS)].url}/platform/v1/consent-requests",
        json=terms,
        headers={"X-Road-Client": GAS_CLIENT, "X-OnceOnly-Api-Key": key},
        timeout=20,
    )
    assert asked.status_code == 201, asked.text
    approved = httpx.post(
        f"{c.procs['central'].url}/consent/v1/consent-requests/{asked.json()['id']}/approve",
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )
    assert approved.status_code == 200, approved.text
    consent = approved.json()
    return {"X-OnceOnly-Consent-Id": consent["id"], "X-OnceOnly-Consent": consent["artefact"]}


def _alerts(url: str, auth: dict[str, str]) -> list[tuple[str, str]]:
    body = httpx.get(f"{url}/me/alerts", headers=auth, timeout=20).json()
    return sorted((a["rule"], a["recipient"]) for a in body["alerts"])


def test_real_exchanges_raise_each_alert_once_and_mail_it(
    world: tuple[Cluster, dict[str, str], Settings, _Mailbox],
) -> None:
    c, keys, settings, mailbox = world
    machida, gas = c.procs[str(MACHIDA)].url, c.procs[str(GAS)].url
    citizen = _citizen(settings)
    token = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    ).issue(citizen, roles=("citizen",))
    auth = {"authorization": f"Bearer {token}"}
    for url in (machida, gas):
        saved = httpx.put(f"{url}/me/alert-settings", headers=auth, json={"email": EMAIL})
        assert saved.status_code == 200, saved.text

    subject, gas_code = _subject(settings), _gas_code(settings)
    assert _read(machida, TAX, keys[TAX], subject, "taxation").startswith("200")
    assert _read(machida, TAX, keys[TAX], subject, "taxation").startswith("200")
    refused = _read(gas, GAS_CLIENT, keys[GAS_CLIENT], gas_code, "address-change")
    assert refused.startswith("403"), refused
    consent = _consent(c, keys[GAS_CLIENT], gas_code, token)
    fields = {"X-OnceOnly-Fields": "address,moved_in_on"}
    ok = _read(gas, GAS_CLIENT, keys[GAS_CLIENT], gas_code, "address-change", **consent, **fields)
    assert ok.startswith("200"), ok

    want = {machida: [("new-recipient", TAX)], gas: [("refused", GAS_CLIENT)]}
    deadline = time.monotonic() + 60
    got: dict[str, list[tuple[str, str]]] = {}
    while time.monotonic() < deadline:
        got = {url: _alerts(url, auth) for url in want}
        if got == want and len(mailbox.messages) >= 2:
            break
        time.sleep(0.5)
    assert got == want
    time.sleep(1.5)  # a few more worker rounds: nothing is raised or sent twice
    assert {url: _alerts(url, auth) for url in want} == want
    assert len(mailbox.messages) == 2
    assert all(m["To"] == EMAIL for m in mailbox.messages)
    text = "\n".join(m.as_string() + m.get_content() for m in mailbox.messages)
    assert TAX in text
    assert GAS_CLIENT in text
    for code in (citizen, subject, gas_code):
        assert code not in text
