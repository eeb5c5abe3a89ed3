"""Statutory parent mandates derived through a real exchange (docs/consent.md, "Statutory parent
mandates"): real central and node processes; ``onceonly consent derive-parent-mandates``, run as
docs/consent.md shows it, asks Machida's resident registry through the one-stop's node about a
parent and the children named, registers a parent mandate for each minor of the household
(valid until the 18th birthday, its basis the exchange's message id), none for someone who is not
in the household, and nothing new when run again; the mandate then lets the parent act for the
child at the consent service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.reference.rights import ONE_STOP
from consent.statutory import majority_begins
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from tests.integration.processes import Cluster, provisioned_cluster, running
from tests.procedures.helpers import MEMBERS, SEED, RegistryLook

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).parents[2] / "docs" / "consent.md"
MACHIDA = "JP/GOV/132098"


@dataclass
class World:
    cluster: Cluster
    settings: Settings
    api_keys: dict[str, str]
    issuer: DevIssuer
    tmp: Path


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
    yield World(cl, settings, api_keys, issuer, tmp_path)
    gen.close()


def _household_with_a_minor(look: RegistryLook) -> tuple[str, list[tuple[str, date]], str]:
    """A parent (世帯主), their children (citizen ids, birth dates, at least one a minor) and a
    citizen of another household, from the seeded registry and the pseudonym store."""
    residents = look.registry_rows(
        "resident-registry",
        "SELECT resident_id, household_id, relationship, birth_date FROM residents",
    )
    pseudo = look.registry_rows(
        "pseudonyms", "SELECT subject_id, agency, pseudonym FROM adapters_pseudonyms"
    )
    subject_of = {
        r["pseudonym"]: r["subject_id"]
        for r in pseudo
        if r["agency"] == f"{MACHIDA}/resident-registry"
    }
    citizen_of = {r["subject_id"]: r["pseudonym"] for r in pseudo if r["agency"] == CITIZEN_AGENCY}

    def citizen(resident: dict[str, Any]) -> str:
        return str(citizen_of[subject_of[resident["resident_id"]]])

    def born(resident: dict[str, Any]) -> date:
        value = resident["birth_date"]
        return value if isinstance(value, date) else date.fromisoformat(str(value))

    now = datetime.now(UTC)
    for head in (r for r in residents if r["relationship"] == "世帯主"):
        children = [
            r
            for r in residents
            if r["household_id"] == head["household_id"] and r["relationship"] == "子"
        ]
        if any(majority_begins(born(c)) > now for c in children):
            stranger = next(r for r in residents if r["household_id"] != head["household_id"])
            return citizen(head), [(citizen(c), born(c)) for c in children], citizen(stranger)
    raise AssertionError("the seeded registry has no household with a minor")


def _derive(world: World, db_url: str, parent: str, child: str, other: str) -> dict[str, Any]:
    """The command exactly as docs/consent.md shows it, with its variables set."""
    [line] = [
        text
        for text in DOCS.read_text().splitlines()
        if text.startswith("onceonly consent derive-parent-mandates")
    ]
    (world.tmp / "one-stop.key").write_text(world.api_keys[str(ONE_STOP)])
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if db_url.startswith("postgresql"):
        env["DATABASE_URL"] = db_url
    env |= {
        "ONCEONLY_DATA_DIR": str(world.settings.data_dir),
        "NODE": world.cluster.procs[MACHIDA].url,
        "PARENT": parent,
        "CHILD": child,
        "OTHER": other,
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", "-c", line], cwd=world.tmp, capture_output=True, text=True, timeout=120,
        check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_parent_gets_a_mandate_per_minor_from_the_registry_and_acts_for_the_child(
    world: World, db_url: str
) -> None:
    look = RegistryLook(world.settings)
    parent, children, stranger = _household_with_a_minor(look)
    now = datetime.now(UTC)
    child, born = next((c, b) for c, b in children if majority_begins(b) > now)
    derived = _derive(world, db_url, parent, child, stranger)
    [mandate] = derived["registered"]
    assert derived["not_in_household"] == [stranger]
    assert (mandate["kind"], mandate["representative"], mandate["represented"]) == (
        "parent",
        parent,
        child,
    )
    assert datetime.fromisoformat(mandate["valid_until"]) == majority_begins(born)
    assert (
        f"household {derived['household']}, born {born.isoformat()}, exchange os-"
        in (mandate["basis"])
    )
    assert mandate["procedures"] == ["address-change"]
    # Idempotent: run again, nothing new.
    again = _derive(world, db_url, parent, child, stranger)
    assert again["registered"] == []
    assert again["kept"] == [mandate["id"]]
    # The mandate lets the parent act for the child; the stranger holds none.
    central = world.cluster.procs["central"].url
    use = {"action": "start an address change", "procedure": "address-change"}
    as_parent = {"Authorization": f"Bearer {world.issuer.issue(parent, roles=('citizen',))}"}
    allowed = httpx.post(
        f"{central}/consent/v1/mandates/{mandate['id']}/authorise",
        json=use,
        headers=as_parent,
        timeout=30,
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["represented"] == child
    as_stranger = {"Authorization": f"Bearer {world.issuer.issue(stranger, roles=('citizen',))}"}
    refused = httpx.post(
        f"{central}/consent/v1/mandates/{mandate['id']}/authorise",
        json=use,
        headers=as_stranger,
        timeout=30,
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "Client.MandateRefused"
    # Someone the registry does not record as a parent gets nothing.
    failed = _derive_failing(world, db_url, child, [stranger])
    assert "not record this person as a parent" in failed


def _derive_failing(world: World, db_url: str, parent: str, children: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if db_url.startswith("postgresql"):
        env["DATABASE_URL"] = db_url
    done = subprocess.run(
        [sys.executable, "-m", "onceonly", "consent", "derive-parent-mandates",
         "--node", world.cluster.procs[MACHIDA].url,
         "--api-key-file", str(world.tmp / "one-stop.key"),
         "--parent", parent, *[x for c in children for x in ("--child", c)],
         "--data-dir", str(world.settings.data_dir)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    return done.stdout + done.stderr
