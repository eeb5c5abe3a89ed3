"""`onceonly audit verify` against a running node's log: intact, then tampered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exchange.db import make_engine
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer
from onceonly.wiring import audit_log
from tests.integration.test_nodes_as_processes import (  # noqa: F401 (fixture)
    ADDRESS,
    MACHIDA,
    TAX,
    _subject,
    cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "ONCEONLY_AUDIT_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "onceonly", "audit", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base, **(env or {})},
    )


@pytest.fixture
def exported(cluster, tmp_path: Path) -> tuple[Path, Path, str]:  # type: ignore[no-untyped-def]  # noqa: F811
    c, keys, settings = cluster
    node = c.procs[str(MACHIDA)]
    subject = _subject(settings)
    for i in range(3):
        r = httpx.get(
            f"{node.url}/r1/{ADDRESS}",
            headers={
                "X-Road-Client": TAX,
                "X-OnceOnly-Api-Key": keys[TAX],
                "X-OnceOnly-Purpose": "taxation",
                "X-OnceOnly-Subject": subject,
                "X-Road-Id": f"audit-{i}",
            },
            timeout=20,
        )
        assert r.status_code == 200
    token = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    ).issue("a1", roles=("auditor",))
    h = {"authorization": f"Bearer {token}"}
    cp = tmp_path / "checkpoint.txt"
    ex = tmp_path / "export.jsonl"
    cp.write_text(httpx.get(f"{node.url}/audit/checkpoint", headers=h, timeout=20).text)
    ex.write_text(httpx.get(f"{node.url}/audit/export", headers=h, timeout=20).text)
    vkey = audit_log(settings, make_engine("sqlite://"), str(MACHIDA)).vkey()
    return cp, ex, vkey


def test_intact_log_verifies(exported: tuple[Path, Path, str]) -> None:
    cp, ex, vkey = exported
    result = _cli("--checkpoint", str(cp), "--export", str(ex), "--key", vkey)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout


def test_altered_entry_is_named(exported: tuple[Path, Path, str]) -> None:
    cp, ex, vkey = exported
    lines = ex.read_text().splitlines()
    assert len(lines) >= 3
    doc = json.loads(lines[1])
    doc_text = json.dumps(doc, ensure_ascii=False)
    lines[1] = (
        doc_text.replace("taxation", "marketing")
        if "taxation" in doc_text
        else doc_text.replace("allow", "deny")
    )
    ex.write_text("\n".join(lines) + "\n")
    result = _cli("--checkpoint", str(cp), "--export", str(ex), "--key", vkey)
    assert result.returncode == 1
    assert "first bad entry: 1" in result.stderr


def test_dropped_entry_fails(exported: tuple[Path, Path, str]) -> None:
    cp, ex, vkey = exported
    lines = ex.read_text().splitlines()
    del lines[0]
    ex.write_text("\n".join(lines) + "\n")
    result = _cli("--checkpoint", str(cp), "--export", str(ex), "--key", vkey)
    assert result.returncode == 1
    assert "NOT verified" in result.stderr


def test_verify_from_a_node_takes_the_token_from_the_environment_or_a_file(  # type: ignore[no-untyped-def]
    cluster,  # noqa: F811
    exported: tuple[Path, Path, str],
    tmp_path: Path,
) -> None:
    c, _keys, settings = cluster
    url = c.procs[str(MACHIDA)].url
    vkey = exported[2]
    token = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    ).issue("a1", roles=("auditor",))
    without = _cli("--node", url, "--key", vkey)
    assert without.returncode == 2
    assert "401" in without.stderr
    assert "ONCEONLY_AUDIT_TOKEN" in without.stderr
    from_env = _cli("--node", url, "--key", vkey, env={"ONCEONLY_AUDIT_TOKEN": token})
    assert from_env.returncode == 0, from_env.stderr
    assert "verified" in from_env.stdout
    token_file = tmp_path / "auditor.token"
    token_file.write_text(token + "\n")
    from_file = _cli("--node", url, "--key", vkey, "--token-file", str(token_file))
    assert from_file.returncode == 0, from_file.stderr
    assert token not in " ".join(from_file.args)


def test_a_refused_call_to_the_nodes_audit_api_is_in_its_log(cluster) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A real node process: a citizen-API call without a token and an auditor-API call with a
    citizen's token are refused (401, 403), and each refusal is an entry of the node's own log
    (stage ``audit-api``, the route template; no subject)."""
    c, _keys, settings = cluster
    node = c.procs[str(MACHIDA)]
    issuer = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    assert httpx.get(f"{node.url}/me/accesses", timeout=20).status_code == 401
    as_citizen = {"authorization": f"Bearer {issuer.issue('someone', roles=('citizen',))}"}
    assert httpx.get(f"{node.url}/audit/size", headers=as_citizen, timeout=20).status_code == 403
    as_auditor = {"authorization": f"Bearer {issuer.issue('a1', roles=('auditor',))}"}
    found = httpx.get(
        f"{node.url}/audit/entries",
        params={"kind": "refusal", "decision": "deny", "limit": 100},
        headers=as_auditor,
        timeout=20,
    )
    assert found.status_code == 200, found.text
    api = [
        e["entry"]
        for e in found.json()["entries"]
        if e["entry"].get("extra", {}).get("stage") == "audit-api"
    ]
    assert [(e["status"], e["extra"]["route"]) for e in api] == [
        (401, "GET /me/accesses"),
        (403, "GET /audit/size"),
    ]
    assert all("subject" not in e and "client" not in e for e in api)
