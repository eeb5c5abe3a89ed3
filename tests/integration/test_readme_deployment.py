"""The README's "Real deployments" section, run verbatim (issue #13: the docs can never drift).

The section's first ``bash`` block starts with the operator's environment (``export NAME=value …``);
this test gives those names its own values — fresh data directories, throw-away databases, free
loopback ports — and runs every other line of the block as it stands, in one ``bash``, in a
folder holding what an operator brings (``residents.keys`` and the registry's own database with one
resident). The block starts the central server and the node in the background; the test waits for
both to be ready, then runs the section's second block (the tax system's ``curl``) verbatim and
checks the address it answers, and that each organisation's files stayed its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from exchange.db import make_engine
from tests.conftest import PG_URL, _create_pg_database
from tests.integration.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Real deployments"
RESIDENT = ("R-0001", "東京都町田市森野2-2-22", "2024-04-01")
READY_TIMEOUT_S = 60.0


def bash_blocks(readme: str) -> list[str]:
    """The ```bash blocks of the README's deployment section, in order."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def exported_names(line: str) -> list[str]:
    assert line.startswith("export "), f"the section must open with the environment: {line!r}"
    return [word.split("=", 1)[0] for word in shlex.split(line)[1:]]


@pytest.fixture
def databases() -> Iterator[Callable[[str, Path], str]]:
    """A fresh database per name: PostgreSQL when DATABASE_URL is set, else SQLite files."""
    drops: list[Callable[[], None]] = []

    def make(name: str, folder: Path) -> str:
        if PG_URL:
            url, drop = _create_pg_database(PG_URL)
            drops.append(drop)
            return url
        return f"sqlite:///{folder / f'{name}.sqlite'}"

    yield make
    for drop in drops:
        drop()


def _residents_database(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE residents (resident_code VARCHAR(32) PRIMARY KEY,"
                " address VARCHAR(200) NOT NULL, moved_in_on DATE NOT NULL)"
            )
        )
        conn.execute(
            text("INSERT INTO residents VALUES (:c, :a, :d)"),
            {"c": RESIDENT[0], "a": RESIDENT[1], "d": RESIDENT[2]},
        )
    engine.dispose()


def _wait_ready(url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never became ready:\n{log.read_text()[-3000:]}")


def test_the_readme_deployment_section_runs_verbatim(
    tmp_path: Path, databases: Callable[[str, Path], str]
) -> None:
    setup, ask = bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    first, rest = setup.split("\n", 1)
    work = tmp_path / "work"
    (work / "docs" / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "examples" / "machida-residents.toml", work / "docs" / "examples")
    (work / "residents.keys").write_text(f"{RESIDENT[0]}\nR-0002\n")
    central_port, machida_port = free_port(), free_port()
    values = {
        "CENTRAL_DIR": str(tmp_path / "central"),
        "CENTRAL_DB": databases("central", tmp_path),
        "CENTRAL_PORT": str(central_port),
        "ONCEONLY_CENTRAL_URL": f"http://127.0.0.1:{central_port}",
        "MACHIDA_DIR": str(tmp_path / "machida"),
        "MACHIDA_DB": databases("machida", tmp_path),
        "MACHIDA_PORT": str(machida_port),
        "MACHIDA_URL": f"http://127.0.0.1:{machida_port}",
        "RESIDENTS_DSN": databases("residents", tmp_path),
        "REGISTRIES": "docs/examples/machida-residents.toml",
    }
    assert exported_names(first) == list(values), "the README's environment and this test differ"
    if not PG_URL:  # on SQLite each component's own files in its data directory
        values["CENTRAL_DB"] = values["MACHIDA_DB"] = ""
    _residents_database(values["RESIDENTS_DSN"])
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= values | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    env["COLUMNS"] = "200"
    log = tmp_path / "deployment.log"
    with log.open("wb") as out:
        script = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", rest],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the servers it starts stay in this group, killed below
        )
    try:
        assert script.wait(timeout=300) == 0, log.read_text()[-3000:]
        _wait_ready(values["ONCEONLY_CENTRAL_URL"], log)
        _wait_ready(values["MACHIDA_URL"], log)
        answer = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", ask],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == {"address": RESIDENT[1], "moved_in_on": RESIDENT[2]}
    finally:
        os.killpg(script.pid, signal.SIGTERM)
    # Each organisation's files stayed its own: Machida holds no CA key, the central operator
    # none of Machida's private keys; the tax office's codes are not the registry's.
    assert not (tmp_path / "machida" / "ca").exists()
    assert not list((tmp_path / "central").glob("members/*/*.key"))
    tax_codes = dict(
        line.split("\t") for line in (work / "municipal-tax.codes").read_text().splitlines()
    )
    assert tax_codes[RESIDENT[0]] != RESIDENT[0]
