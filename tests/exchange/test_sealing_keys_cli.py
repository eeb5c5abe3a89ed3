"""Sealing keys and the translator key: made once by the CLI, published in the registry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exchange.central_config import VerifiedRegistry
from exchange.db import make_engine
from exchange.identifiers import ClientId
from exchange.keystore import KeyStore
from exchange.node.app import database_url
from exchange.registry_admin import RegistryAdmin
from exchange.sealing import SealingKey
from exchange.settings import Settings
from onceonly.cli import app

CLIENT = ClientId.parse("JP/GOV/132098/resident-registry")


def test_keys_member_makes_the_sealing_key_once_and_the_registry_publishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    first = runner.invoke(app, ["keys", "member", str(CLIENT)])
    assert first.exit_code == 0, first.output
    keys = KeyStore(tmp_path)
    made = SealingKey.load(keys.subsystem_seal_key(CLIENT)).public_key
    again = runner.invoke(app, ["keys", "member", str(CLIENT)])
    assert again.exit_code == 0, again.output
    assert SealingKey.load(keys.subsystem_seal_key(CLIENT)).public_key == made  # kept, not remade
    assert keys.hosted_subsystems(CLIENT.member) == [CLIENT]  # the sealing key is no subsystem

    member = str(CLIENT.member)
    assert runner.invoke(app, ["registry", "add-member", member, "--name", "町田市"]).exit_code == 0
    pub = keys.subsystem_seal_key(CLIENT).with_suffix(".pub")
    added = runner.invoke(
        app,
        [
            "registry",
            "add-subsystem",
            str(CLIENT),
            "--cert",
            str(keys.subsystem_cert(CLIENT)),
            "--seal-key",
            str(pub),
        ],
    )
    assert added.exit_code == 0, added.output
    translator = runner.invoke(app, ["registry", "set-translator", "--url", "http://central"])
    assert translator.exit_code == 0, translator.output

    engine = make_engine(database_url(Settings(data_dir=tmp_path), "central"))
    doc = RegistryAdmin(engine).document(
        instance="JP", ca_pem=keys.ca_cert.read_text(), central_url="", now=datetime.now(UTC)
    )
    engine.dispose()
    registry = VerifiedRegistry(doc)
    assert registry.seal_key(CLIENT) == made
    assert doc.translator is not None
    assert doc.translator.url == "http://central"
    assert registry.translator_verifier.typ == "onceonly-subject-token+jws"
