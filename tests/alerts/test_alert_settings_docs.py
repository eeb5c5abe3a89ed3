"""docs/alerts.md's policy data is the rules' default, and ``ONCEONLY_ALERTS_POLICY_FILE`` loads
such a file (the operator's way to change the volume threshold)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exchange.errors import ConfigurationError
from exchange.settings import Settings
from onceonly.wiring import alert_rules, smtp_settings
from policies.alerts import AlertRules
from policies.errors import PolicyCompileError

DOC = Path(__file__).parents[2] / "docs" / "alerts.md"


def _documented_data() -> dict[str, object]:
    (block,) = re.findall(r"^```json\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    data: dict[str, object] = json.loads(block)
    return data


def test_the_documented_policy_data_is_the_default() -> None:
    assert AlertRules().data == _documented_data()


def test_the_policy_file_sets_the_volume_threshold(tmp_path: Path) -> None:
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps(_documented_data() | {"max_reads_per_window": 3}))
    rules = alert_rules(Settings(data_dir=tmp_path, alerts_policy_file=path))
    assert rules.data["max_reads_per_window"] == 3
    path.write_text("[1]")
    with pytest.raises(ConfigurationError):
        alert_rules(Settings(data_dir=tmp_path, alerts_policy_file=path))
    path.write_text(json.dumps({"window_s": 0}))
    with pytest.raises(PolicyCompileError):
        alert_rules(Settings(data_dir=tmp_path, alerts_policy_file=path))


def test_smtp_credentials_come_from_a_file(tmp_path: Path) -> None:
    assert smtp_settings(Settings(data_dir=tmp_path)) is None
    creds = tmp_path / "smtp.credentials"
    creds.write_text("alerts-user\ns3cret\n")
    smtp = smtp_settings(
        Settings(data_dir=tmp_path, smtp_host="127.0.0.1", smtp_credentials_file=creds)
    )
    assert smtp is not None
    assert smtp.credentials() == ("alerts-user", "s3cret")
    creds.write_text("only-a-user\n")
    with pytest.raises(ConfigurationError):
        smtp.credentials()
