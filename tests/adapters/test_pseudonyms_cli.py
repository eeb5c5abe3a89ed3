"""``onceonly pseudonyms enrol``: the central operator issues one agency's codes at the translator.

The output holds that agency's codes only; enrolling again keeps every code; two agencies' codes
for the same citizen are different and translate into each other only through the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.pseudonyms import PseudonymService
from exchange.db import make_engine
from exchange.settings import Settings
from onceonly.cli import app
from onceonly.wiring import PSEUDONYMS, registry_database_url

RESIDENTS = "JP/GOV/132098/resident-registry"
TAX = "JP/GOV/132098/municipal-tax"


def _codes(path: Path) -> dict[str, str]:
    return dict(line.split("\t") for line in path.read_text().splitlines())


def test_enrol_issues_an_agencys_codes_once_and_only_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(tmp_path / "central"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_text("resident-0001\nresident-0002\n\n")
    runner = CliRunner()
    first = runner.invoke(
        app,
        [
            "pseudonyms",
            "enrol",
            RESIDENTS,
            "--citizen-keys",
            str(keys),
            "--out",
            str(tmp_path / "r.tsv"),
        ],
    )
    assert first.exit_code == 0, first.output
    residents = _codes(tmp_path / "r.tsv")
    assert set(residents) == {"resident-0001", "resident-0002"}
    assert (tmp_path / "r.tsv").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(
        app,
        [
            "pseudonyms",
            "enrol",
            RESIDENTS,
            "--citizen-keys",
            str(keys),
            "--out",
            str(tmp_path / "r2.tsv"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert _codes(tmp_path / "r2.tsv") == residents
    tax = runner.invoke(
        app,
        ["pseudonyms", "enrol", TAX, "--citizen-keys", str(keys), "--out", str(tmp_path / "t.tsv")],
    )
    assert tax.exit_code == 0, tax.output
    taxes = _codes(tmp_path / "t.tsv")
    assert not set(taxes.values()) & set(residents.values())
    settings = Settings(data_dir=tmp_path / "central")
    store = PseudonymService(make_engine(registry_database_url(settings, PSEUDONYMS)), (TAX,))
    for key in residents:
        assert store.translate(taxes[key], from_agency=TAX, to_agency=RESIDENTS) == residents[key]


def test_enrol_refuses_an_agency_that_is_not_a_subsystem_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(tmp_path / "central"))
    keys = tmp_path / "keys.txt"
    keys.write_text("resident-0001\n")
    result = CliRunner().invoke(
        app,
        [
            "pseudonyms",
            "enrol",
            "not-an-agency",
            "--citizen-keys",
            str(keys),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_enrol_with_own_codes_registers_the_agencys_identifiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCEONLY_DATA_DIR", str(tmp_path / "central"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_text("R-0001\nR-0002\n")
    runner = CliRunner()
    own = runner.invoke(
        app,
        [
            "pseudonyms",
            "enrol",
            RESIDENTS,
            "--own-codes",
            "--citizen-keys",
            str(keys),
            "--out",
            str(tmp_path / "r.tsv"),
        ],
    )
    assert own.exit_code == 0, own.output
    assert _codes(tmp_path / "r.tsv") == {"R-0001": "R-0001", "R-0002": "R-0002"}
    runner.invoke(
        app,
        ["pseudonyms", "enrol", TAX, "--citizen-keys", str(keys), "--out", str(tmp_path / "t.tsv")],
    )
    taxes = _codes(tmp_path / "t.tsv")
    settings = Settings(data_dir=tmp_path / "central")
    store = PseudonymService(make_engine(registry_database_url(settings, PSEUDONYMS)), (TAX,))
    assert store.translate(taxes["R-0001"], from_agency=TAX, to_agency=RESIDENTS) == "R-0001"
    citizen = store.translate("R-0001", from_agency=RESIDENTS, to_agency="citizen")
    assert citizen != "R-0001"
