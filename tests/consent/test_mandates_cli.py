"""The operator's mandate commands as docs/consent.md shows them, run on a real data directory."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onceonly.cli import app

DOCS = Path(__file__).parents[2] / "docs" / "consent.md"


def test_the_documented_register_mandate_command_registers_and_revoke_mandate_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The data directory's own SQLite databases, whatever DATABASE_URL the tests were given.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ONCEONLY_DATABASE_URL", raising=False)
    [line] = [
        text
        for text in DOCS.read_text().splitlines()
        if text.startswith("onceonly consent register-mandate")
    ]
    data = str(tmp_path / "d")
    runner = CliRunner()
    assert (
        runner.invoke(app, ["keys", "init", "--instance", "JP", "--data-dir", data]).exit_code == 0
    )
    done = runner.invoke(app, [*shlex.split(line)[1:], "--data-dir", data])
    assert done.exit_code == 0, done.output
    mandate = json.loads(done.output)
    assert (mandate["kind"], mandate["status"], mandate["procedures"]) == (
        "parent",
        "active",
        ["address-change"],
    )
    assert mandate["represented_party"] == f"PARENT/{mandate['id']}"
    ended = runner.invoke(app, ["consent", "revoke-mandate", mandate["id"], "--data-dir", data])
    assert ended.exit_code == 0, ended.output
    assert json.loads(ended.output)["status"] == "revoked"
    refused = runner.invoke(
        app,
        [
            *shlex.split(line)[1:5],
            "--represented",
            "x",
            "--kind",
            "authorised",
            "--basis",
            "b",
            "--until",
            "2030-01-01T00:00:00Z",
            "--data-dir",
            data,
        ],
    )
    assert refused.exit_code != 0
    assert "granted by the represented person" in refused.output
