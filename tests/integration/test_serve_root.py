"""``onceonly serve`` as a newcomer meets it: ``GET /`` leads to the portal and lists what runs.

Issue #14 item 12: the root answered a JSON 404. Now it is a ja/en page (JSON on request) whose
links — portal, one-stop desk, central registry, every node — all answer, and whose links never
carry the request's Host header.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 120.0


@pytest.mark.parametrize("citizens", [10, 0])  # 0: an instance without synthetic citizens
def test_the_root_of_serve_lists_every_component_with_working_links(
    tmp_path: Path, citizens: int
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"COLUMNS": "200"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onceonly",
                "serve",
                "--port",
                str(port),
                "--citizens",
                str(citizens),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        page = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(base + "/", headers={"Host": "evil.example"}, timeout=2)
                if page.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert page is not None, log.read_text()[-3000:]
        assert page.status_code == 200, log.read_text()[-3000:]
        assert page.headers["content-type"].startswith("text/html")
        assert 'href="/portal/"' in page.text
        assert "evil.example" not in page.text
        listing = httpx.get(base + "/", headers={"Accept": "application/json"}, timeout=5).json()
        paths = [c["path"] for c in listing["components"]]
        assert paths[0] == "/portal/"
        assert "/one-stop/" in paths
        assert "/central/registry" in paths
        assert sum(p.startswith("/nodes/") for p in paths) == 4
        for path in paths:
            if path == "/one-stop/":
                continue  # an API with no page of its own: its routes need a citizen's token
            r = httpx.get(base + path, timeout=10, follow_redirects=True)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
