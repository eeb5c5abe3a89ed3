"""API keys of departmental systems: issued, checked, cached for a few seconds, revoked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

import exchange.node.consumer as consumer_module
from exchange.db import make_engine, upgrade
from exchange.errors import AuthenticationError
from exchange.identifiers import ClientId
from exchange.node.consumer import Consumer
from exchange.provisioning import issue_api_key, revoke_api_keys
from exchange.signing import MemberSigner, generate_private_key

CLIENT = ClientId.parse("JP/GOV/000001/land-registry")
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def _consumer(tmp_path: Path) -> tuple[Consumer, object]:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.sqlite'}")
    upgrade(engine)
    consumer = Consumer(
        node=str(CLIENT.member),
        signers={CLIENT: MemberSigner(generate_private_key())},
        registry=None,  # type: ignore[arg-type]  # (C1) needs no registry
        transport=None,  # type: ignore[arg-type]
        audit=None,  # type: ignore[arg-type]
        keys_engine=engine,
        max_skew_s=60,
        timeout_s=5,
        clock=lambda: NOW,
    )
    return consumer, engine


def _headers(key: str, client: ClientId = CLIENT) -> dict[str, str]:
    return {"x-road-client": str(client), "x-onceonly-api-key": key}


def test_a_revoked_key_stops_working_once_the_cache_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer, engine = _consumer(tmp_path)
    key = issue_api_key(engine, node=str(CLIENT.member), client=CLIENT, now=NOW)  # type: ignore[arg-type]
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    assert asyncio.run(consumer.authenticate_async(_headers(key))) == CLIENT
    assert revoke_api_keys(engine, node=str(CLIENT.member), client=CLIENT) == 1  # type: ignore[arg-type]
    # within the cache's lifetime the verified key is still trusted (documented: at most 5 s) …
    assert consumer.authenticate(_headers(key)) == CLIENT
    # … and no longer after it
    clock[0] += consumer_module.API_KEY_CACHE_TTL_S + 0.1
    with pytest.raises(AuthenticationError):
        asyncio.run(consumer.authenticate_async(_headers(key)))
    with pytest.raises(AuthenticationError):
        consumer.authenticate(_headers(key))


def test_a_cached_key_still_belongs_to_its_own_client_only(tmp_path: Path) -> None:
    consumer, engine = _consumer(tmp_path)
    key = issue_api_key(engine, node=str(CLIENT.member), client=CLIENT, now=NOW)  # type: ignore[arg-type]
    assert consumer.authenticate(_headers(key)) == CLIENT  # now cached
    other = ClientId.parse("JP/GOV/000001/other-system")
    with pytest.raises(AuthenticationError):
        consumer.authenticate(_headers(key, other))
    with pytest.raises(AuthenticationError):
        consumer.authenticate(_headers("oo_not-a-key"))


def test_the_cli_issues_and_revokes_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from onceonly.cli import app

    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    runner = CliRunner()
    issued = runner.invoke(app, ["keys", "api-key", str(CLIENT)])
    assert issued.exit_code == 0, issued.output
    key = issued.output.strip()
    assert key.startswith("oo_")
    revoked = runner.invoke(app, ["keys", "revoke-api-key", str(CLIENT)])
    assert revoked.exit_code == 0
    assert "revoked 1 API key(s)" in revoked.output
    bad = runner.invoke(app, ["keys", "revoke-api-key", "not-a-client"])
    assert bad.exit_code != 0
    assert "Client.InvalidIdentifier" in bad.output
