"""The consent log like any other log (issue 15 item 4), against a real central server process:
it publishes signed checkpoints by itself, serves inclusion and consistency proofs, `onceonly
audit verify` verifies it online and offline (docs/consent.md's block, run verbatim), a citizen
sees only their own consent history, each entry with its proof and the whole proven complete,
refusals of its routes are in it, and a signed receipt verifies offline while altered copies do
not."""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from audit import merkle
from audit.checkpoint import NoteVerifier, verify_checkpoint
from audit.completeness import SubjectProof, verify_record
from consent.model import Consent
from exchange.canonical import canonical_json
from exchange.identifiers import ClientId
from exchange.settings import Settings
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer
from onceonly.wiring import consent_service
from tests.consent.consent_factories import request_input
from tests.integration.processes import Cluster, provisioned_cluster, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Verifying the consent log and a receipt"
LOG = "/consent/v1/log"
CITIZEN = "citizen-consent-log-1"
OTHER = "citizen-consent-log-2"
PUBLISH_TIMEOUT_S = 30.0


@dataclass
class Central:
    cluster: Cluster
    settings: Settings
    url: str
    issuer: DevIssuer
    consent: Consent

    def bearer(self, subject: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.issue(subject, roles=(role,))}"}


def _grant_and_revoke(url: str, settings: Settings, issuer: DevIssuer) -> Consent:
    """A consumer's request (in process, on the service's own database), then the citizen's
    approval, pause and revocation over the citizen API."""
    now = datetime.now(UTC)
    terms = request_input(
        subject=CITIZEN,
        valid_from=(now - timedelta(hours=1)).isoformat(),
        valid_until=(now + timedelta(days=30)).isoformat(),
        mode="standing",
    )
    service = consent_service(settings)  # held, so its pools are closed below, not collected
    request = service.create_request(ClientId.parse(terms.client), terms, now=now)
    _dispose_engines()  # the test's own pools; the central server has its own
    del service
    citizen = {"Authorization": f"Bearer {issuer.issue(CITIZEN)}"}
    base = f"{url}/consent/v1"
    approved = httpx.post(f"{base}/consent-requests/{request.id}/approve", headers=citizen)
    assert approved.status_code == 200, approved.text
    consent = Consent.model_validate(approved.json())
    for verb in ("pause", "revoke"):
        done = httpx.post(f"{base}/consents/{consent.id}/{verb}", headers=citizen, timeout=20)
        assert done.status_code == 200, done.text
    return consent


def _dispose_engines() -> None:
    """Close the pools the test opened through the composition root (an open psycopg connection
    collected later is a ResourceWarning, an error under pytest)."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, Engine):
            obj.dispose()


@pytest.fixture
def central(tmp_path: Path, db_url: str) -> Iterator[Central]:
    cluster, settings, _keys = provisioned_cluster(
        tmp_path / "central",
        (),
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=2,
        env={"ONCEONLY_CHECKPOINT_INTERVAL_S": "0.5"},
    )
    gen = running(cluster)
    c = next(gen)
    c.procs["central"].start()
    url = c.procs["central"].url
    issuer = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    yield Central(c, settings, url, issuer, _grant_and_revoke(url, settings, issuer))
    gen.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onceonly", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "ONCEONLY_AUDIT_TOKEN"},
    )


def test_the_central_server_publishes_signed_consent_log_checkpoints_by_itself(
    central: Central,
) -> None:
    auditor = central.bearer("auditor-1", "auditor")
    vkey = _cli("audit", "key", "consent-service", "--data-dir", str(central.settings.data_dir))
    verifier = NoteVerifier.from_vkey(vkey.stdout.strip())
    size = httpx.get(f"{central.url}{LOG}/audit/size", headers=auditor).json()["size"]
    assert size >= 3  # granted, paused, revoked
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while True:  # the history is never published on demand: only the background job fills it
        history = httpx.get(f"{central.url}{LOG}/audit/checkpoints", headers=auditor).json()
        if history["checkpoints"] and history["checkpoints"][0]["size"] >= size:
            break
        assert time.monotonic() < deadline, history
        time.sleep(0.2)
    newest = verify_checkpoint(history["checkpoints"][0]["note"], verifier)
    assert newest.size >= size
    one = httpx.get(f"{central.url}{LOG}/audit/consistency?first=1&second={size}", headers=auditor)
    assert one.status_code == 200
    assert len(one.json()["proof"]) >= 1


def test_a_citizen_sees_only_their_consent_history_each_entry_with_a_proof(
    central: Central,
) -> None:
    mine = httpx.get(f"{central.url}{LOG}/me/accesses", headers=central.bearer(CITIZEN, "citizen"))
    assert mine.status_code == 200, mine.text
    body = mine.json()
    kinds = [a["kind"] for a in body["accesses"]]
    assert kinds == ["consent.granted", "consent.paused", "consent.revoked"]
    assert all(a["basis"]["consent_id"] == central.consent.id for a in body["accesses"])
    checkpoint = verify_checkpoint(body["checkpoint"], NoteVerifier.from_vkey(body["log_key"]))
    for access in body["accesses"]:
        leaf = merkle.leaf_hash(canonical_json(access["entry"]))
        proof = [base64.b64decode(h) for h in access["inclusion_proof"]]
        assert merkle.verify_inclusion(
            leaf, access["index"], checkpoint.size, proof, checkpoint.root
        )
    # ... and the history is proven complete up to a checkpoint signed by the consent log key.
    completeness = body["completeness"]
    proven = verify_record(
        completeness["checkpoint"],
        NoteVerifier.from_vkey(body["log_key"]),
        [SubjectProof.from_json(p) for p in completeness["proofs"]],
        [(a["index"], a["entry"]) for a in body["accesses"]],
    )
    assert proven.size >= len(body["accesses"])
    other = central.bearer(OTHER, "citizen")
    assert httpx.get(f"{central.url}{LOG}/me/accesses", headers=other).json()["accesses"] == []
    first = body["accesses"][0]["index"]
    assert httpx.get(f"{central.url}{LOG}/me/accesses/{first}", headers=other).status_code == 404


def test_a_refusal_of_the_consent_log_routes_is_recorded_in_the_consent_log(
    central: Central,
) -> None:
    assert httpx.get(f"{central.url}{LOG}/audit/export").status_code == 401
    citizen = central.bearer(CITIZEN, "citizen")
    assert httpx.get(f"{central.url}{LOG}/audit/export", headers=citizen).status_code == 403
    export = httpx.get(
        f"{central.url}{LOG}/audit/export", headers=central.bearer("auditor-1", "auditor")
    )
    refusals = [
        json.loads(line)["entry"] for line in export.text.splitlines() if '"kind":"refusal"' in line
    ]
    routes = [(r["status"], r["extra"]["route"]) for r in refusals]
    assert (401, f"GET {LOG}/audit/export") in routes
    assert (403, f"GET {LOG}/audit/export") in routes


def _docs_block() -> str:
    section = (ROOT / "docs" / "consent.md").read_text(encoding="utf-8").split(SECTION, 1)[1]
    (block,) = re.findall(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    return str(block)


def test_the_docs_block_verifies_the_consent_log_and_a_receipt_and_refuses_altered_copies(
    central: Central, tmp_path: Path
) -> None:
    first, rest = _docs_block().split("\n", 1)
    (receipt, *_) = httpx.get(
        f"{central.url}/consent/v1/consents/{central.consent.id}/receipts",
        headers=central.bearer(CITIZEN, "citizen"),
    ).json()
    values = {
        "CENTRAL_DIR": str(central.settings.data_dir),
        "ONCEONLY_CENTRAL_URL": central.url,
        "CONSENT_ID": central.consent.id,
        "RECEIPT_ID": receipt["id"],
    }
    assert first.startswith("export ")
    assert [w.split("=", 1)[0] for w in shlex.split(first)[1:]] == list(values)
    work = tmp_path / "auditor"
    work.mkdir()
    auditor = central.bearer("auditor-1", "auditor")["Authorization"]
    (work / "auditor.token").write_text(auditor.removeprefix("Bearer ") + "\n")
    (work / "auditor.header").write_text(f"Authorization: {auditor}\n")
    citizen = central.bearer(CITIZEN, "citizen")["Authorization"]
    (work / "citizen.header").write_text(f"Authorization: {citizen}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ONCEONLY_AUDIT_TOKEN")}
    env |= values | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    env["COLUMNS"] = "200"
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", rest],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.count("verified: ") == 3, ran.stdout  # online, offline, the receipt
    assert f"receipt {receipt['id']} of consent {central.consent.id}" in ran.stdout
    assert "consent_given" in ran.stdout

    vkey = (work / "consent-log.vkey").read_text().strip()
    lines = (work / "consent-log.jsonl").read_text().splitlines()
    # (the log also holds the status push's delivery attempts: find the pause among them)
    paused = next(i for i, line in enumerate(lines) if "consent.paused" in line)
    lines[paused] = lines[paused].replace("consent.paused", "consent.resumed")
    (work / "altered.jsonl").write_text("\n".join(lines) + "\n")
    altered = _cli(
        "audit", "verify", "--key", vkey, "--checkpoint", str(work / "consent-checkpoint.txt"),
        "--export", str(work / "altered.jsonl"),
    )  # fmt: skip
    assert altered.returncode == 1
    assert f"first bad entry: {paused}" in altered.stderr
    header, payload, signature = (work / "receipt.jws").read_text().strip().split(".")
    forged = payload[:-2] + ("AA" if not payload.endswith("AA") else "BB")
    (work / "forged.jws").write_text(f"{header}.{forged}.{signature}")
    refused = _cli(
        "consent", "verify-receipt", "--key", str(work / "consent-keys.jwks"),
        str(work / "forged.jws"),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "NOT verified" in refused.stderr
