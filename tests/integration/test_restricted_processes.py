"""Restricted statutes end to end, with the commands docs/operator.md and docs/audit.md show: the
central operator marks a statute restricted, a real exchange between real node processes under it
is logged restricted, an auditor lists it (statute and release date, never the subject) and
nothing is overdue; `audit verify` still passes on the log."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exchange.db import make_engine
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from onceonly.wiring import audit_log
from tests.integration.processes import Cluster
from tests.integration.test_nodes_as_processes import (  # noqa: F401 (fixture)
    ADDRESS,
    MACHIDA,
    TAX,
    _subject,
    cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).parents[2] / "docs"
ORDINANCE = "jp-example/restricted-inquiry"  # sorts before the tax office's statute: decided first


def _doc_command(doc: str, start: str) -> list[str]:
    """The argv (after ``onceonly``) of the one command in a ```bash block of ``doc`` that
    contains ``start``."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", (DOCS / doc).read_text(), re.M | re.S)
    found = [line for block in blocks for line in block.splitlines() if start in line]
    assert len(found) == 1, found
    argv = shlex.split(found[0])
    return argv[argv.index("onceonly") + 1 :]


def _cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "ONCEONLY_AUDIT_TOKEN"}
    base |= {"DATABASE_URL": settings.database_url or "", "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "onceonly", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base, "ONCEONLY_DATA_DIR": str(settings.data_dir), **(env or {})},
    )


def test_a_restricted_exchange_between_processes_is_listed_for_auditors(
    cluster: tuple[Cluster, dict[str, str], Settings],  # noqa: F811
) -> None:
    c, keys, settings = cluster
    node = c.procs[str(MACHIDA)]
    # docs/operator.md's example, verbatim, then one for the tax office's address reads
    police = _cli(settings, *_doc_command("operator.md", "onceonly registry add-statute police"))
    assert police.returncode == 0, police.stderr
    tax = _cli(
        settings,
        *f"registry add-statute tax-inquiry --service {ADDRESS} --client {TAX} "
        f"--purposes taxation --fields address --ordinance {ORDINANCE} --restricted-days 1".split(),
    )
    assert tax.returncode == 0, tax.stderr
    token = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    ).issue("a1", roles=("auditor",))
    auditor = {"authorization": f"Bearer {token}"}
    subject = _subject(settings)
    listed: list[dict[str, object]] = []
    for attempt in range(40):  # the node adopts the new registry within its refresh (1 s here)
        r = httpx.get(
            f"{node.url}/r1/{ADDRESS}",
            headers={
                "X-Road-Client": TAX,
                "X-OnceOnly-Api-Key": keys[TAX],
                "X-OnceOnly-Purpose": "taxation",
                "X-OnceOnly-Subject": subject,
                "X-Road-Id": f"restricted-{attempt}",
            },
            timeout=20,
        )
        assert r.status_code == 200, r.text
        listed = httpx.get(f"{node.url}/audit/restricted", headers=auditor, timeout=20).json()[
            "entries"
        ]
        if listed:
            break
        time.sleep(0.5)
    assert {e["statute"] for e in listed} == {f"statute:{ORDINANCE}"}
    assert subject not in str(listed)

    env = {"ONCEONLY_AUDIT_TOKEN": token}
    argv = _doc_command("audit.md", "onceonly audit restricted")
    argv[argv.index("--node") + 1] = node.url
    overdue = _cli(settings, *argv, env=env)
    assert overdue.returncode == 0, overdue.stderr + overdue.stdout
    assert "0 overdue restricted entries" in overdue.stdout
    everything = _cli(settings, *[a for a in argv if a != "--overdue"], env=env)
    assert everything.returncode == 0, everything.stderr
    assert ORDINANCE in everything.stdout
    assert subject not in everything.stdout
    assert re.search(rf"\b{len(listed)} restricted entries", everything.stdout)

    vkey = audit_log(settings, make_engine("sqlite://"), str(MACHIDA)).vkey()
    verified = _cli(settings, "audit", "verify", "--node", node.url, "--key", vkey, env=env)
    assert verified.returncode == 0, verified.stderr
