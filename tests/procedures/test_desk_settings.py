"""The desk's and runners' own settings and the desk's HTTP consent port, without a federation:
what they refuse before anything is asked of another component."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exchange.errors import AuthenticationError, ConfigurationError, NotFoundError
from onceonly.cli import app
from onceonly.desk import load_desk_settings, load_runner_settings
from procedures.consent_desk import HttpConsentDesk

NOW = datetime(2026, 12, 1, tzinfo=UTC)
UNREACHABLE = "http://127.0.0.1:9"


def _desk_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite'}",
        "NODE_URL": "http://127.0.0.1:8101",
        "CONSENT_URL": "http://127.0.0.1:8100",
        "TOKEN_PUBLIC_KEY_FILE": str(tmp_path / "issuer.pem"),
    }.items():
        monkeypatch.setenv(f"ONCEONLY_DESK_{name}", value)


def test_the_desk_needs_its_api_key_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _desk_env(monkeypatch, tmp_path)
    with pytest.raises(ConfigurationError, match="ONCEONLY_DESK_API_KEY"):
        load_desk_settings()
    key_file = tmp_path / "api.key"
    key_file.write_text("secret-key\n")
    monkeypatch.setenv("ONCEONLY_DESK_API_KEY_FILE", str(key_file))
    assert load_desk_settings(port=9400).key == "secret-key"


def test_a_runner_without_its_settings_stops_with_one_line_naming_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("DATABASE_URL", "NODE_URL", "SIGNING_KEY_FILE", "API_KEY"):
        monkeypatch.delenv(f"ONCEONLY_RUNNER_{name}", raising=False)
    with pytest.raises(ConfigurationError, match="ONCEONLY_RUNNER_"):
        load_runner_settings()
    result = CliRunner().invoke(app, ["runner"])
    assert result.exit_code == 2
    assert "ONCEONLY_RUNNER_" in result.output


def test_the_api_key_is_not_a_command_line_option() -> None:
    for command in ("desk", "runner"):
        result = CliRunner().invoke(app, [command, "--api-key", "x"])
        assert result.exit_code != 0
        assert "No such option" in result.output


def test_the_desk_decides_nothing_for_a_citizen_without_their_token() -> None:
    desk = HttpConsentDesk(UNREACHABLE, "key", UNREACHABLE)
    try:
        with pytest.raises(AuthenticationError):
            desk.approve_request("citizen-1", "req-1", now=NOW, token=None)
        with pytest.raises(AuthenticationError):
            desk.decline_request("citizen-1", "req-1", now=NOW, token="")
        with pytest.raises(NotFoundError):  # never another route of the consent service
            desk.approve_request("citizen-1", "../consents/x/revoke", now=NOW, token="t")
    finally:
        desk.close()


def test_the_desk_needs_exactly_one_token_issuer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _desk_env(monkeypatch, tmp_path)
    monkeypatch.setenv("ONCEONLY_DESK_API_KEY", "secret-key")
    monkeypatch.setenv("ONCEONLY_DESK_OIDC_ISSUER", "https://idp.example")
    with pytest.raises(ConfigurationError, match="one token issuer"):
        load_desk_settings()
    monkeypatch.delenv("ONCEONLY_DESK_TOKEN_PUBLIC_KEY_FILE")
    settings = load_desk_settings()
    assert settings.oidc_issuer == "https://idp.example"
    assert settings.jwt_algorithms == ["RS256"]
    monkeypatch.delenv("ONCEONLY_DESK_OIDC_ISSUER")
    with pytest.raises(ConfigurationError, match="ONCEONLY_DESK_OIDC_ISSUER"):
        load_desk_settings()
