"""The one-stop desk and its runners as processes of their own (``python -m onceonly desk`` /
``runner``) beside real central and node processes: the desk opens only the procedures database
and reaches everything else over HTTP; consent requests go through the requester's own node."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from adapters.reference.rights import ONE_STOP
from adapters.translator import TRANSLATOR_LOG
from exchange.db import make_engine
from exchange.keystore import KeyStore
from exchange.node.app import database_url
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from tests.integration.processes import Cluster, Proc, free_port, provisioned_cluster, running
from tests.procedures.helpers import MEMBERS, SEED, RegistryLook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_ADDRESS = "東京都町田市森野二丁目2番22号"
MACHIDA = "JP/GOV/132098"
GAS_MEMBER = "JP/COM/9000000000002"
GAS_CLIENT = f"{GAS_MEMBER}/gas"
CONSENT_ROUTE = "/platform/v1/consent-requests"
WAIT_S = 90.0


@dataclass
class World:
    cluster: Cluster
    settings: Settings
    api_keys: dict[str, str]
    issuer: DevIssuer
    tmp: Path
    log: Path

    def token(self, citizen: str) -> str:
        return self.issuer.issue(citizen, roles=("citizen",))

    def desk(self, db: str) -> Proc:
        key_file = self.tmp / "issuer.pem"
        key_file.write_bytes(self.issuer.public_key_pem())
        env = {
            "ONCEONLY_DESK_DATABASE_URL": db,
            "ONCEONLY_DESK_NODE_URL": self.cluster.procs[MACHIDA].url,
            "ONCEONLY_DESK_API_KEY": self.api_keys[str(ONE_STOP)],
            "ONCEONLY_DESK_CONSENT_URL": self.cluster.procs["central"].url,
            "ONCEONLY_DESK_TOKEN_PUBLIC_KEY_FILE": str(key_file),
        }
        return Proc("desk", ["desk"], _only(env), free_port(), self.log)

    def runner(self, db: str, name: str) -> Proc:
        key_file = self.tmp / f"{name}.key"  # the API key from a file, this time
        key_file.write_text(self.api_keys[str(ONE_STOP)])
        env = {
            "ONCEONLY_RUNNER_DATABASE_URL": db,
            "ONCEONLY_RUNNER_NODE_URL": self.cluster.procs[MACHIDA].url,
            "ONCEONLY_RUNNER_API_KEY_FILE": str(key_file),
            "ONCEONLY_RUNNER_SIGNING_KEY_FILE": str(
                KeyStore(self.settings.data_dir).subsystem_key(ONE_STOP)
            ),
            "ONCEONLY_RUNNER_RUNNER_ID": name,
        }
        return Proc(name, ["runner"], _only(env), free_port(), self.log)


def _only(env: dict[str, str]) -> dict[str, str]:
    """The component's own settings; the cluster's (data directory, database) are blanked, so
    the desk and runners cannot fall back on them."""
    return {**env, "ONCEONLY_DATA_DIR": "/nonexistent", "DATABASE_URL": ""}


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    cluster, settings, api_keys = provisioned_cluster(
        tmp_path / "data",
        MEMBERS,
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=40,
        seed_value=SEED,
    )
    issuer = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    gen = running(cluster)
    cl = next(gen)
    for p in cl.procs.values():
        p.start()
    yield World(cl, settings, api_keys, issuer, tmp_path, tmp_path / "processes.log")
    gen.close()


def _procedures_db(world: World, db_url: str) -> str:
    if db_url.startswith("postgresql"):
        return db_url
    return f"sqlite:///{(world.tmp / 'desk' / 'procedures.sqlite').resolve()}"


def _audit(settings: Settings, component: str, log_id: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url(settings, component))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT kind, decision, client, subject, data FROM audit_entries "
                    "WHERE log_id = :l ORDER BY idx"
                ),
                {"l": log_id},
            ).mappings()
            return [{**r, "data": bytes(r["data"]).decode()} for r in rows]
    finally:
        engine.dispose()


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(os.readlink(fd))
        except OSError:
            continue
    return out


def _start_and_confirm(desk: Proc, token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.post(
        desk.url + "/procedures/address-change",
        json={"address": NEW_ADDRESS, "move_date": time.strftime("%Y-%m-%d", time.gmtime())},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 201, r.text
    view = r.json()
    decisions = {
        rec["recipient"]: "approve" for rec in view["recipients"] if rec["consent_request_id"]
    }
    r = httpx.post(
        f"{desk.url}/procedures/{view['id']}/confirm",
        json={"consents": decisions},
        headers=auth,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait_finished(desk: Proc, token: str, procedure_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        r = httpx.get(
            f"{desk.url}/procedures/{procedure_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        if r.json()["certificate_available"]:
            return dict(r.json())
        time.sleep(0.2)
    raise AssertionError(f"procedure {procedure_id} did not finish: {r.text}")


def test_address_change_runs_through_desk_and_runner_processes_over_http_only(
    world: World, db_url: str
) -> None:
    look = RegistryLook(world.settings)
    citizen = look.citizens_in(["resident-registry", "gas"])[0]
    db = _procedures_db(world, db_url)
    (world.tmp / "desk").mkdir()
    desk = world.desk(db).start()
    runner = world.runner(db, "runner-a").start()
    try:
        token = world.token(citizen)
        confirmed = _start_and_confirm(desk, token)
        gas = next(s for s in confirmed["steps"] if s["recipient"] == "gas")
        assert gas["basis"] == "consent", gas
        assert gas["consent_id"], gas
        done = _wait_finished(desk, token, confirmed["id"])
        # The desk holds no file of another component's database (nor key) open.
        assert desk.popen is not None
        data_dir = str(world.settings.data_dir.resolve())
        held = [f for f in _open_files(desk.popen.pid) if f.startswith(data_dir)]
        assert held == [], held
    finally:
        runner.stop()
        desk.stop()
    states = {s["recipient"]: s["state"] for s in done["steps"]}
    assert done["status"] == "done", done["steps"]
    assert states["resident-registry"] == "done"
    assert states["municipal-tax"] == "done"  # a statute step
    assert states["gas"] == "done"  # the consented private utility step
    rows = look.registry_rows(
        "gas",
        "SELECT supply_address FROM gas_contracts WHERE customer_id = :k",
        k=look.local_pseudonym(citizen, "gas"),
    )
    assert rows[0]["supply_address"] == NEW_ADDRESS
    # The citizen approved at the consent service with their own token: it is theirs there.
    consents = httpx.get(
        world.cluster.procs["central"].url + "/consent/v1/consents",
        headers={"Authorization": f"Bearer {world.token(citizen)}"},
        timeout=10,
    ).json()
    assert gas["consent_id"] in {c["id"] for c in consents}


def _consent_terms(subject: str, agency: str) -> dict[str, Any]:
    now = time.time()
    return {
        "subject": subject,
        "subject_agency": agency,
        "client": GAS_CLIENT,
        "services": [f"{MACHIDA}/resident-registry/address/v1"],
        "purpose": {"code": "supply-address", "text_ja": "供給先住所の確認", "text_en": "Supply"},
        "fields": ["address"],
        "valid_from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "valid_until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 86400)),
        "mode": "one-time",
        "data_retention_days": 0,
        "legal_text_version": "gas-2026-1",
    }


def test_consent_request_goes_through_the_consumers_node_by_its_own_pseudonym(
    world: World,
) -> None:
    look = RegistryLook(world.settings)
    citizen = look.citizens_in(["gas"])[0]
    own_code = look.local_pseudonym(citizen, "gas")
    node = world.cluster.procs[GAS_MEMBER].url
    headers = {"X-Road-Client": GAS_CLIENT, "X-OnceOnly-Api-Key": world.api_keys[GAS_CLIENT]}

    made = httpx.post(
        node + CONSENT_ROUTE, json=_consent_terms(own_code, "client"), headers=headers, timeout=20
    )
    assert made.status_code == 201, made.text
    assert made.json()["subject"] == own_code  # the department never learns the citizen's id
    # The citizen sees the request under their own id at the consent service.
    mine = httpx.get(
        world.cluster.procs["central"].url + "/consent/v1/consent-requests",
        headers={"Authorization": f"Bearer {world.token(citizen)}"},
        timeout=10,
    ).json()
    assert made.json()["id"] in {r["id"] for r in mine}

    no_key = httpx.post(
        node + CONSENT_ROUTE,
        json=_consent_terms(own_code, "client"),
        headers={"X-Road-Client": GAS_CLIENT},
        timeout=20,
    )
    assert no_key.status_code == 401, no_key.text
    assert no_key.headers["content-type"].startswith("application/problem+json")
    unknown = httpx.post(
        node + CONSENT_ROUTE,
        json=_consent_terms("no-such-code-000", "client"),
        headers=headers,
        timeout=20,
    )
    assert unknown.status_code == 404, unknown.text
    other = httpx.post(
        node + CONSENT_ROUTE,
        json={**_consent_terms(own_code, "client"), "client": str(ONE_STOP)},
        headers=headers,
        timeout=20,
    )
    assert other.status_code == 403, other.text

    node_log = _audit(world.settings, f"node-{GAS_MEMBER.replace('/', '_')}", GAS_MEMBER)
    consent_rows = [r for r in node_log if "consent-request" in r["data"]]
    assert [(r["kind"], r["decision"]) for r in consent_rows] == [
        ("request", "allow"),
        ("refusal", "deny"),  # no API key
        ("request", "allow"),  # passed on; the consent service refused (404)
        ("refusal", "deny"),  # another subsystem's name
    ]
    translator = _audit(world.settings, "translator-audit", TRANSLATOR_LOG)
    resolved = [r for r in translator if "consent-request" in r["data"]]
    assert [(r["kind"], r["subject"]) for r in resolved] == [
        ("translation", own_code),
        ("refusal", "no-such-code-000"),
    ]
    assert not any(citizen in r["data"] for r in resolved)  # the log keeps the consumer's code


def test_two_runner_processes_share_one_postgresql_database_and_run_no_step_twice(
    world: World, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several runners share PostgreSQL (SKIP LOCKED); set DATABASE_URL")
    look = RegistryLook(world.settings)
    citizens = look.citizens_in(["resident-registry", "water"])[:3]
    desk = world.desk(db_url).start()
    runners: list[Proc] = []
    try:
        ids = {c: _start_and_confirm(desk, world.token(c))["id"] for c in citizens}
        runners = [world.runner(db_url, "runner-a").start(), world.runner(db_url, "runner-b")]
        runners[1].start()
        done = [_wait_finished(desk, world.token(c), pid) for c, pid in ids.items()]
        claims = sum(_claimed(r) for r in runners)
    finally:
        for r in runners:
            r.stop()
        desk.stop()
    steps = [s for d in done for s in d["steps"]]
    sent = [s for s in steps if s["state"] != "skipped" or s["attempts"] > 0]
    assert all(d["status"] == "done" for d in done), [d["steps"] for d in done]
    assert all(s["attempts"] == 1 for s in sent), sent
    assert claims == len(sent)  # every claim of either runner was a different step


def _claimed(runner: Proc) -> int:
    body = httpx.get(runner.url + "/metrics", timeout=10).text
    found = re.search(r"^onceonly_procedure_steps_claimed_total (\S+)$", body, re.M)
    return int(float(found.group(1))) if found else 0


def _register_mandate(world: World, db_url: str, **over: str) -> dict[str, Any]:
    """``onceonly consent register-mandate`` as an operator runs it, on the central's data."""
    import json
    import subprocess
    import sys

    args = {
        "--kind": "parent",
        "--basis": "household record: parent of a minor",
        "--until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400)),
        "--procedures": "address-change",
        "--purposes": "*",
        **over,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    if db_url.startswith("postgresql"):
        env["DATABASE_URL"] = db_url
    done = subprocess.run(
        [sys.executable, "-m", "onceonly", "consent", "register-mandate",
         *[x for kv in args.items() for x in kv], "--data-dir", str(world.settings.data_dir)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_parent_changes_the_address_of_a_child_and_the_childs_record_shows_it(
    world: World, db_url: str
) -> None:
    """Issue 16: a parent acts for a child under a registered mandate (consent granted, address
    change started and carried out), every exchange carries the represented party, the child's
    records show who acted; a mandate that does not cover the procedure is refused and audited."""
    look = RegistryLook(world.settings)
    child = look.citizens_in(["resident-registry", "gas"])[0]
    parent = next(c for c in look.citizens_in(["resident-registry"]) if c != child)
    central = world.cluster.procs["central"].url
    mandate = _register_mandate(
        world, db_url, **{"--representative": parent, "--represented": child}
    )
    party = f"PARENT/{mandate['id']}"
    assert mandate["represented_party"] == party
    narrow = _register_mandate(
        world,
        db_url,
        **{"--representative": parent, "--represented": child, "--procedures": "other"},
    )
    db = _procedures_db(world, db_url)
    (world.tmp / "desk").mkdir()
    desk = world.desk(db).start()
    runner = world.runner(db, "runner-a").start()
    as_parent = {"Authorization": f"Bearer {world.token(parent)}"}
    move = {"address": NEW_ADDRESS, "move_date": time.strftime("%Y-%m-%d", time.gmtime())}
    try:
        refused = httpx.post(
            desk.url + "/procedures/address-change",
            json=move,
            headers=as_parent | {"X-OnceOnly-Acting-For": narrow["id"]},
            timeout=30,
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "Client.MandateRefused"
        acting = as_parent | {"X-OnceOnly-Acting-For": mandate["id"]}
        started = httpx.post(
            desk.url + "/procedures/address-change", json=move, headers=acting, timeout=30
        )
        assert started.status_code == 201, started.text
        view = started.json()
        assert (view["represented_party"], view["acted_by"]) == (party, parent)
        decisions = {
            r["recipient"]: "approve" for r in view["recipients"] if r["consent_request_id"]
        }
        assert "gas" in decisions
        confirmed = httpx.post(
            f"{desk.url}/procedures/{view['id']}/confirm",
            json={"consents": decisions},
            headers=acting,
            timeout=30,
        )
        assert confirmed.status_code == 200, confirmed.text
        done = _wait_finished(desk, world.token(child), view["id"])  # the child sees it too
    finally:
        runner.stop()
        desk.stop()
    assert done["status"] == "done", done["steps"]
    gas = next(s for s in done["steps"] if s["recipient"] == "gas")
    rows = look.registry_rows(
        "gas",
        "SELECT supply_address FROM gas_contracts WHERE customer_id = :k",
        k=look.local_pseudonym(child, "gas"),
    )
    assert rows[0]["supply_address"] == NEW_ADDRESS
    # The consent is the child's; its history names the parent who approved it.
    as_child = {"Authorization": f"Bearer {world.token(child)}"}
    history = httpx.get(
        f"{central}/consent/v1/consents/{gas['consent_id']}/history", headers=as_child, timeout=10
    ).json()
    assert history[0]["actor"] == f"{parent} for {child} (mandate {mandate['id']})"
    # The child's consent-log record: the mandate, the consent granted for them, the refusal.
    record = httpx.get(f"{central}/consent/v1/log/me/accesses", headers=as_child, timeout=10)
    entries = [a["entry"] for a in record.json()["accesses"]]
    assert {e["kind"] for e in entries if e.get("represented_party") == party} >= {
        "mandate.granted",
        "consent.granted",
    }
    assert any(
        e["kind"] == "refusal" and "does not cover procedure address-change" in e["reason"]
        for e in entries
    )
    # Every exchange of the procedure at Machida's node carried the represented party, and the
    # child's own access view there shows it.
    mine = httpx.get(
        f"{world.cluster.procs[MACHIDA].url}/me/accesses", headers=as_child, timeout=20
    ).json()["accesses"]
    assert mine
    assert all(a["entry"].get("represented_party") == party for a in mine), mine
    node_log = _audit(world.settings, f"node-{MACHIDA.replace('/', '_')}", MACHIDA)
    # (the desk's consent requests through the node are platform requests, not exchanges for
    # the child: the approval that follows is what the parent does, and it names them; the
    # consent status events the node receives for the desk are not exchanges either)
    one_stop = [
        r
        for r in node_log
        if r["client"] == str(ONE_STOP)
        and '"stage":"consent-request"' not in r["data"]
        and not r["kind"].startswith("event.")
    ]
    assert one_stop
    missing = [r["data"] for r in one_stop if f'"represented_party":"{party}"' not in r["data"]]
    assert missing == []
