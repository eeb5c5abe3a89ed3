"""``onceonly portal``'s own settings (``portal.settings``): a TOML file under ONCEONLY_PORTAL_*
variables, pinned log keys checked at start, the secret never a command-line value, and every
problem a one-line error."""

from __future__ import annotations

import re
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
        "allow_dev_issuer = true\n"
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


def _with(config: Path, text: str) -> Path:
    """``config`` without its development sign-in, plus ``text`` (TOML keys, then tables)."""
    lines = [
        line
        for line in config.read_text().splitlines()
        if not line.startswith(("dev_issuer_key_file", "allow_dev_issuer"))
    ]
    top, tables = text.split("---") if "---" in text else (text, "")
    path = config.with_name("portal-variant.toml")
    path.write_text(top + "\n".join(lines) + "\n" + tables)
    return path


def test_a_development_issuer_key_without_the_explicit_flag_is_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The development issuer cannot be enabled by accident: its key file alone is refused."""
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    variant = _with(config, 'dev_issuer_key_file = "/srv/dev-issuer.key"\n')
    with pytest.raises(ConfigurationError, match="allow_dev_issuer = true"):
        load_portal_settings(variant)
    monkeypatch.setenv("ONCEONLY_PORTAL_ALLOW_DEV_ISSUER", "false")
    with pytest.raises(ConfigurationError, match="allow_dev_issuer = true"):
        load_portal_settings(config)


def test_the_development_issuer_beside_a_provider_is_refused(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    monkeypatch.setenv("ONCEONLY_PORTAL_OIDC_ISSUER", "https://idp.example")
    with pytest.raises(ConfigurationError, match="configure one sign-in"):
        load_portal_settings(config)


def test_signin_at_a_provider_is_read_from_the_file_and_its_secret_from_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    monkeypatch.setenv("ONCEONLY_PORTAL_SIGNIN__CLIENT_SECRET", "client-secret-from-env")
    variant = _with(
        config,
        'oidc_issuer = "https://idp.example/realms/citizens"\n'
        'public_origin = "https://portal.example"\n'
        'jwt_audience = "https://api.onceonly.example"\n'
        'jwt_citizen_claim = "citizen_id"\n'
        'jwt_role_map = { "onceonly-auditor" = "auditor" }\n'
        "---"
        "[signin]\n"
        'client_id = "onceonly-portal"\n'
        'scopes = ["openid", "onceonly"]\n',
    )
    settings = load_portal_settings(variant)
    assert settings.signin is not None
    assert settings.signin.client_id == "onceonly-portal"
    secret = settings.signin.secret()
    assert secret is not None
    assert secret.get_secret_value() == "client-secret-from-env"
    assert settings.jwt_role_map == {"onceonly-auditor": "auditor"}
    assert settings.claim_mapping().citizen_claim == "citizen_id"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('---[signin]\nclient_id = "p"\n', "needs oidc_issuer"),
        ('oidc_issuer = "https://idp.example"\n---[signin]\nclient_id = "p"\n', "public_origin"),
        (
            'oidc_issuer = "https://idp.example"\npublic_origin = "https://p.example"\n'
            '---[signin]\nclient_id = "p"\nclient_secret_file = "/nowhere/secret"\n',
            "cannot read the client secret file",
        ),
        ("", "set oidc_issuer with [signin]"),
    ],
)
def test_incomplete_signin_settings_are_one_line_errors(
    config: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    with pytest.raises(ConfigurationError) as caught:
        load_portal_settings(_with(config, text))
    assert message in caught.value.detail
    assert "\n" not in caught.value.detail


def test_the_provider_example_of_docs_portal_md_is_a_valid_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's example in docs/portal.md ("Sign-in at an OpenID Connect provider") loads
    as it stands, but for its two files (made here) and its shortened log key."""
    doc = (Path(__file__).parents[2] / "docs" / "portal.md").read_text()
    section = doc.split("## Sign-in at an OpenID Connect provider", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    secret = tmp_path / "portal-client-secret"
    secret.write_text("client-secret\n")
    example = example.replace("/etc/onceonly/portal-client-secret", str(secret))
    example = re.sub(r'log_key = ".*"', f'log_key = "{_vkey()}"', example)
    config = tmp_path / "portal.toml"
    config.write_text(example)
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", SECRET)
    settings = load_portal_settings(config)
    assert settings.signin is not None
    assert settings.oidc_issuer == "https://idp.example.lg.jp/realms/citizens"
    assert settings.claim_mapping().role_map == {"onceonly-auditor": "auditor"}
    assert settings.dev_issuer_key_file is None
