"""The command line: one-line errors (exit 2) instead of tracebacks, keys made only by `keys …`,
no secrets as argument values, help on every command and option, API keys printed whole."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from consent.artefact import ConsentIssuerKey
from onceonly.cli import app

REPO = Path(__file__).parents[2]
MACHIDA = "JP/GOV/132098"
SUBSYSTEM = f"{MACHIDA}/resident-registry"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ONCEONLY_AUDIT_TOKEN", raising=False)
    path = tmp_path / "data"
    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(path))
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _start(data_dir: Path, *args: str) -> tuple[int, str]:
    """Run a serving command (``central``, ``node``) as a process: one that wrongly starts
    serving is stopped after a minute and fails the test instead of hanging it."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"ONCEONLY_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "onceonly", *args, "--port", "0"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`onceonly {' '.join(args)}` started serving instead of refusing")
    return done.returncode, done.stdout + done.stderr


def _one_line_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("error")
    return lines[0]


def _provision(data_dir: Path) -> None:
    for args in (("keys", "init", "--instance", "JP"), ("keys", "member", SUBSYSTEM)):
        code, output = _cli(*args)
        assert code == 0, output


def test_node_on_an_empty_data_dir_names_the_missing_keys_and_the_command(
    data_dir: Path,
) -> None:
    code, output = _start(data_dir, "node", "--member", MACHIDA)
    assert code == 2
    line = _one_line_error(output)
    assert str(data_dir / "members" / "JP_GOV_132098") in line
    assert f"onceonly keys member {MACHIDA}/<SUBSYSTEM>" in line


def test_central_on_an_empty_data_dir_names_the_missing_instance_and_keys_init(
    data_dir: Path,
) -> None:
    code, output = _start(data_dir, "central")
    assert code == 2
    line = _one_line_error(output)
    assert str(data_dir / "instance.json") in line
    assert "onceonly keys init" in line


def test_a_busy_port_is_one_line_naming_the_address(data_dir: Path, busy_port: int) -> None:
    for args in (("central",), ("node", "--member", MACHIDA)):
        code, output = _cli(*args, "--port", str(busy_port))
        assert code == 2
        assert f"cannot listen on 127.0.0.1:{busy_port}" in _one_line_error(output)


def test_a_node_whose_audit_log_key_is_missing_refuses_to_start_and_makes_none(
    data_dir: Path,
) -> None:
    _provision(data_dir)
    log_key = data_dir / "audit" / "JP_GOV_132098.skey"
    log_key.unlink()
    code, output = _start(data_dir, "node", "--member", MACHIDA)
    assert code == 2
    line = _one_line_error(output)
    assert str(log_key) in line
    assert "onceonly keys member" in line
    assert not log_key.exists()


@pytest.mark.parametrize(
    "key", ["consent/issuer.key", "audit/consent-service.skey", "central/central.key"]
)
def test_central_whose_key_is_missing_refuses_to_start_and_makes_none(
    data_dir: Path, key: str
) -> None:
    _provision(data_dir)
    (data_dir / key).unlink()
    code, output = _start(data_dir, "central")
    assert code == 2
    line = _one_line_error(output)
    assert str(data_dir / key) in line
    assert "onceonly keys init" in line
    assert not (data_dir / key).exists()


def test_without_a_token_issuer_the_central_server_names_the_ways_to_get_one(
    data_dir: Path,
) -> None:
    _provision(data_dir)
    code, output = _start(data_dir, "central")
    assert code == 2
    line = _one_line_error(output)
    assert "ONCEONLY_OIDC_ISSUER" in line
    assert "ONCEONLY_JWT_PUBLIC_KEY_FILE" in line
    assert "ONCEONLY_ALLOW_DEV_ISSUER=true" in line
    assert not (data_dir / "dev-issuer.key").exists()


def test_a_development_issuer_key_in_the_data_dir_is_refused_without_the_explicit_flag(
    data_dir: Path,
) -> None:
    """The accident the flag stops: a non-demo deployment whose data directory happens to hold
    the development issuer's key (``keys dev-issuer`` for a trial) must not trust it."""
    _provision(data_dir)
    code, output = _cli("keys", "dev-issuer", "--data-dir", str(data_dir))
    assert code == 0, output
    for args in (("central",), ("node", "--member", MACHIDA)):
        code, output = _start(data_dir, *args)
        assert code == 2
        assert "ONCEONLY_ALLOW_DEV_ISSUER=true" in _one_line_error(output)


def test_with_the_flag_a_missing_development_key_names_the_command_that_makes_it(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provision(data_dir)
    monkeypatch.setenv("ONCEONLY_ALLOW_DEV_ISSUER", "true")
    code, output = _start(data_dir, "central")
    assert code == 2
    line = _one_line_error(output)
    assert "onceonly keys dev-issuer" in line
    assert "ONCEONLY_OIDC_ISSUER" in line
    assert not (data_dir / "dev-issuer.key").exists()


def test_keys_init_and_member_make_the_log_keys_once_and_keep_them(data_dir: Path) -> None:
    _provision(data_dir)
    made = {
        p: p.read_bytes()
        for p in (
            data_dir / "audit" / "JP_GOV_132098.skey",
            data_dir / "audit" / "consent-service.skey",
            data_dir / "consent" / "issuer.key",
        )
    }
    _provision(data_dir)
    assert {p: p.read_bytes() for p in made} == made
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in made)


def test_audit_key_of_a_log_that_does_not_exist_is_refused_and_makes_no_key(
    data_dir: Path,
) -> None:
    _provision(data_dir)
    before = sorted((data_dir / "audit").iterdir())
    for log_id in ("NOT-A-MEMBER", "JP/GOV/999999"):
        code, output = _cli("audit", "key", log_id)
        assert code == 2
        _one_line_error(output)
    assert sorted((data_dir / "audit").iterdir()) == before
    code, output = _cli("audit", "key", MACHIDA)
    assert code == 0
    assert output.startswith(f"onceonly.example/{MACHIDA}/audit+")


def test_consent_key_prints_the_published_key_set_and_never_makes_a_key(data_dir: Path) -> None:
    code, output = _cli("consent", "key")
    assert code == 2
    assert "onceonly keys init" in _one_line_error(output)
    assert not (data_dir / "consent" / "issuer.key").exists()
    _provision(data_dir)
    code, output = _cli("consent", "key")
    assert code == 0
    issuer = ConsentIssuerKey.load(data_dir / "consent" / "issuer.key", issuer="x")
    assert json.loads(output) == issuer.receipt_verifier().jwks()
    (jwk,) = json.loads(output)["keys"]
    assert jwk["kid"] == issuer.kid
    assert "d" not in jwk  # the public half only


def test_audit_verify_takes_no_secret_as_an_argument_value(data_dir: Path) -> None:
    code, output = _cli("audit", "verify", "--key", "k", "--node", "http://x", "--token", "s3")
    assert code == 2
    assert "No such option: --token" in output


def test_an_unreadable_file_is_one_line_not_a_traceback(data_dir: Path) -> None:
    _provision(data_dir)
    missing = data_dir / "nowhere.pem"
    code, output = _cli("registry", "add-subsystem", SUBSYSTEM, "--cert", str(missing))
    assert code == 2
    assert str(missing) in _one_line_error(output)


def test_every_command_and_option_has_help() -> None:
    def commands(cmd: object, path: str) -> Iterator[tuple[str, object]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from commands(sub, f"{path} {name}")
        else:
            yield path, cmd

    missing = []
    for path, cmd in commands(typer.main.get_command(app), "onceonly"):
        if not getattr(cmd, "help", None):
            missing.append(path)
        missing += [
            f"{path} {p.name}" for p in getattr(cmd, "params", []) if not getattr(p, "help", None)
        ]
    assert missing == []


@pytest.mark.integration
@pytest.mark.slow
def test_serve_prints_every_api_key_whole_at_80_columns(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "COLUMNS", "LINES"}}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onceonly",
            "serve",
            "--port",
            "0",
            "--citizens",
            "5",
            "--data-dir",
            str(tmp_path / "serve"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.stdout is not None
    keys: list[str] = []
    try:
        for line in proc.stdout:
            if line.startswith("    oo_") or "…" in line:
                keys.append(line.rstrip("\n"))
            if "/water" in line:  # the last client, in sorted order: its key is the next line
                keys.append(proc.stdout.readline().rstrip("\n"))
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stdout.close()
    assert len(keys) == 9, keys
    assert all(re.fullmatch(r"    oo_[A-Za-z0-9_-]{43}", k) for k in keys), keys


def test_a_node_with_workers_whose_key_is_missing_refuses_before_any_worker_starts(
    data_dir: Path,
) -> None:
    _provision(data_dir)
    log_key = data_dir / "audit" / "JP_GOV_132098.skey"
    log_key.unlink()
    code, output = _start(data_dir, "node", "--member", MACHIDA, "--workers", "2")
    assert code == 2
    line = _one_line_error(output)
    assert str(log_key) in line
    assert not log_key.exists()


def test_a_node_whose_sealing_key_is_missing_refuses_to_start_and_makes_none(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provision(data_dir)
    assert _cli("keys", "dev-issuer")[0] == 0
    monkeypatch.setenv("ONCEONLY_ALLOW_DEV_ISSUER", "true")
    seal_key = data_dir / "members" / "JP_GOV_132098" / "seal" / "resident-registry.key"
    seal_key.unlink()
    code, output = _start(data_dir, "node", "--member", MACHIDA)
    assert code == 2
    line = _one_line_error(output)
    assert str(seal_key) in line
    assert f"onceonly keys member {MACHIDA}/<SUBSYSTEM>" in line
    assert not seal_key.exists()


def test_set_translator_makes_the_translator_log_key_once_and_audit_key_reads_it(
    data_dir: Path,
) -> None:
    _provision(data_dir)
    assert _cli("registry", "set-translator", "--url", "http://127.0.0.1:8100")[0] == 0
    made = {
        p: p.read_bytes()
        for p in (
            data_dir / "translator" / "translator.key",
            data_dir / "audit" / "pseudonym-translator.skey",
        )
    }
    assert _cli("registry", "set-translator", "--url", "http://127.0.0.1:8100")[0] == 0
    assert {p: p.read_bytes() for p in made} == made
    code, output = _cli("audit", "key", "pseudonym-translator")
    assert code == 0
    assert output.startswith("onceonly.example/pseudonym-translator/audit+")


def test_set_consent_service_publishes_the_issuer_key_keys_init_made_and_makes_none(
    data_dir: Path,
) -> None:
    from datetime import UTC, datetime

    from exchange.db import make_engine
    from exchange.registry_admin import RegistryAdmin
    from exchange.settings import Settings
    from onceonly.wiring import consent_issuer_key

    _provision(data_dir)
    assert _cli("registry", "set-consent-service", "--url", "http://127.0.0.1:8100")[0] == 0
    engine = make_engine(f"sqlite:///{data_dir / 'central.sqlite'}")
    doc = RegistryAdmin(engine).document(
        instance="JP", ca_pem="", central_url="", now=datetime.now(UTC)
    )
    engine.dispose()
    assert doc.consent_service is not None
    assert doc.consent_service.url == "http://127.0.0.1:8100"
    key = consent_issuer_key(Settings(data_dir=data_dir))
    assert doc.consent_service.issuer_public_key == key.public_key_pem()
    issuer = data_dir / "consent" / "issuer.key"
    issuer.unlink()
    code, output = _cli("registry", "set-consent-service", "--url", "http://127.0.0.1:8100")
    assert code == 2
    assert str(issuer) in _one_line_error(output)
    assert not issuer.exists()


@pytest.mark.parametrize("key", ["translator/translator.key", "audit/pseudonym-translator.skey"])
def test_central_whose_registry_names_a_translator_refuses_without_its_keys(
    data_dir: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provision(data_dir)
    assert _cli("keys", "dev-issuer")[0] == 0
    monkeypatch.setenv("ONCEONLY_ALLOW_DEV_ISSUER", "true")
    assert _cli("registry", "set-translator", "--url", "http://127.0.0.1:8100")[0] == 0
    (data_dir / key).unlink()
    code, output = _start(data_dir, "central")
    assert code == 2
    line = _one_line_error(output)
    assert str(data_dir / key) in line
    assert "onceonly registry set-translator" in line
    assert not (data_dir / key).exists()


def test_the_portal_without_its_development_issuer_key_names_the_command(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.checkpoint import NoteSigner

    for name in ("SECRET_FILE", "CONSENT_URL", "NODES", "PORT", "CONFIG"):
        monkeypatch.delenv(f"ONCEONLY_PORTAL_{name}", raising=False)
    monkeypatch.setenv("ONCEONLY_PORTAL_SECRET", "s" * 40)
    missing = tmp_path / "dev-issuer.key"
    config = tmp_path / "portal.toml"
    config.write_text(
        'consent_url = "http://127.0.0.1:8100/"\n'
        f'dev_issuer_key_file = "{missing}"\n'
        "allow_dev_issuer = true\n"
        'host = "127.0.0.1"\n'
        "[[nodes]]\n"
        f'member = "{MACHIDA}"\n'
        'url = "http://127.0.0.1:8101"\n'
        f'log_key = "{NoteSigner.generate(f"onceonly.example/{MACHIDA}/audit").vkey()}"\n'
    )
    # The key is loaded after the port is bound: a free port, so the key is what is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, output = _cli("portal", "--config", str(config), "--port", str(port))
    assert code == 2
    line = _one_line_error(output)
    assert str(missing) in line
    assert "onceonly keys dev-issuer" in line
    assert not missing.exists()


def test_an_unknown_database_component_is_one_line_naming_the_known_ones(data_dir: Path) -> None:
    code, output = _cli("db", "upgrade", "--component", "nodes")
    assert code == 2
    line = _one_line_error(output)
    assert "'nodes'" in line
    assert "translator-audit" in line


def test_dev_issuer_writes_its_public_key_for_components_in_other_data_directories(
    data_dir: Path,
) -> None:
    from exchange.tokens import DEV_ISSUER_KEY, DevIssuer

    code, output = _cli("keys", "dev-issuer")
    assert code == 0
    assert output.split() == [str(data_dir / "dev-issuer.key"), str(data_dir / "dev-issuer.pub")]
    issuer = DevIssuer.load(data_dir / DEV_ISSUER_KEY, issuer="onceonly-dev", audience="onceonly")
    assert (data_dir / "dev-issuer.pub").read_bytes() == issuer.public_key_pem()


def test_the_serve_socket_answers_kept_alive_connections_without_nagle_delay() -> None:
    """``serve`` and ``demo`` listen on ``free_socket()`` from asyncio's own loop, which sets
    ``TCP_NODELAY`` only on sockets made as TCP: without it every answer on a kept-alive
    connection waited about 40 ms for the client's delayed ACK (found while fuzzing)."""
    from onceonly.federation import free_socket

    sock = free_socket()

    async def nodelay_of_an_accepted_connection() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("socket")
            seen.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        async with server:
            _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, timeout=10)
            writer.close()
            await writer.wait_closed()
        return value

    assert asyncio.run(nodelay_of_an_accepted_connection()) != 0


def test_add_statute_with_usage_terms_publishes_retention_and_onward_transfer(
    data_dir: Path,
) -> None:
    """The options docs/operator.md ("Usage terms of a statute") describes; defaults left out."""
    from datetime import UTC, datetime

    from exchange.db import make_engine
    from exchange.registry_admin import RegistryAdmin

    _provision(data_dir)
    common = [
        "--service",
        "JP/GOV/132098/resident-registry/address/v1",
        "--client",
        "JP/GOV/132098/municipal-tax",
        "--purposes",
        "taxation",
        "--fields",
        "address",
    ]
    kept = ["registry", "add-statute", "kept", *common, "--ordinance", "jp-a/1"]
    assert _cli(*kept, "--retention-days", "30", "--onward-transfer")[0] == 0
    assert _cli("registry", "add-statute", "plain", *common, "--ordinance", "jp-b/1")[0] == 0
    code, output = _cli(*kept, "--retention-days", "-1")
    assert code != 0, output
    engine = make_engine(f"sqlite:///{data_dir / 'central.sqlite'}")
    doc = RegistryAdmin(engine).document(
        instance="JP", ca_pem="", central_url="", now=datetime.now(UTC)
    )
    engine.dispose()
    by_id = {t.id: t for t in doc.statutes}
    assert (by_id["kept"].retention_days, by_id["kept"].onward_transfer) == (30, True)
    dumped = by_id["plain"].model_dump(mode="json")
    assert "retention_days" not in dumped
    assert "onward_transfer" not in dumped
