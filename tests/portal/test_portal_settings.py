"""``onceonly portal``'s own settings (``portal.settings``): a TOML file under ONCEONLY_PORTAL_*
variables, pinned log keys checked at start, the secret never a command-line value, and every
problem a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.checkpoint import NoteSigner, NoteVerifier
from exchange.errors import ConfigurationError
from onceonly.cli import app
from portal.settings import load_portal_settings

SECRET = "a-portal-secret-of-32-characters"


def _vkey() -> str:
    return NoteSigner.generate("onceonly.example/JP/GOV/132098/audit").vkey()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SECRET", "SECRET_FILE", "CONSENT_URL", "NODES", "PORT", "CONFIG"):
        monkeypatch.delenv(f"ONCEONLY_PORTAL_{name}", raising=False)
    path = tmp_path / "portal.toml"
    path.write_text(
        'consent_url = "http://127.0.0.1:8100/"\n'
        'dev_issuer_key_file = "/srv/dev-issuer.key"\n'
        "port = 8400\n"
        "[[nodes]]\n"
        'member = "JP/GOV/132098"\n'
        'url = "http://127.0.0.1:8101"\n'
        f'log_key = "{_vkey()}"\n'
    )
    return path


def test_settings_come_from_the_file_and_the_environment_wins(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    monkeypatch.setenv("ONCEONLY_PORTAL_PORT", "8500")
    settings = load_portal_settings(config)
    assert settings.consent_url == "http://127.0.0.1:8100"
    assert [n.member for n in settings.nodes] == ["JP/GOV/132098"]
    assert settings.port == 8500
    assert settings.portal_secret.get_secret_value() == SECRET
    assert load_portal_settings(config, port=9000, host=None).port == 9000


def test_the_secret_can_come_from_a_file(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET_FILE", str(secret_file))
    assert load_portal_settings(config).portal_secret.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "ONCEONLY_PORTAL_SECRET"),
        ({"ONCEONLY_PORTAL_SECRET": "short"}, "at least 16 bytes"),
        ({"ONCEONLY_PORTAL_SECRET": SECRET, "ONCEONLY_PORTAL_NODES": "[]"}, "nodes"),
        (
            {
                "ONCEONLY_PORTAL_SECRET": SECRET,
                "ONCEONLY_PORTAL_NODES": '[{"member": "m", "url": "http://n", "log_key": "x+y"}]',
            },
            "not a log verifier key",
        ),
        ({"ONCEONLY_PORTAL_SECRET": SECRET, "ONCEONLY_PORTAL_CONSENT_URL": "ftp://x"}, "http"),
    ],
)
def test_bad_or_missing_settings_are_one_line_errors(
    config: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_portal_settings(config)
    assert message in caught.value.detail
    assert "\n" not in caught.value.detail


def test_a_pinned_log_key_can_come_from_a_file(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    key = _vkey()
    (tmp_path / "machida.vkey").write_text(key + "\n")
    node = f'{{"member": "m", "url": "http://n", "log_key_file": "{tmp_path / "machida.vkey"}"}}'
    monkeypatch.setenv("ONCEONLY_PORTAL_NODES", f"[{node}]")
    (loaded,) = load_portal_settings(config).nodes
    assert loaded.log_key == key
    assert loaded.verifier().key_id == NoteVerifier.from_vkey(key).key_id
    for bad, message in (
        (node.replace("machida.vkey", "nowhere.vkey"), "cannot read log_key_file"),
        (node.replace('"log_key_file"', f'"log_key": "{key}", "log_key_file"'), "not both"),
    ):
        monkeypatch.setenv("ONCEONLY_PORTAL_NODES", f"[{bad}]")
        with pytest.raises(ConfigurationError, match=message):
            load_portal_settings(config)


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no portal config file"):
        load_portal_settings(tmp_path / "nowhere.toml")


def test_the_command_fails_in_one_line_without_settings_and_takes_no_secret_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ONCEONLY_PORTAL_CONSENT_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["portal"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "consent_url" in result.output
    assert len(result.output.strip().splitlines()) == 1
    refused = runner.invoke(app, ["portal", "--secret", SECRET])
    assert refused.exit_code != 0
    assert "No such option" in refused.output
