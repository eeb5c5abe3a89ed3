"""compose.yaml, every service run as a local process (issue 13, "Operator artefacts").

No image can be pulled here, so ``compose_local`` reads compose.yaml and runs each service's own
command with its own environment, in ``depends_on`` order, on loopback ports, with real
PostgreSQL: a throw-away database for each one the compose file's init script creates, dropped
afterwards. The one service whose image cannot be stood in for by this virtual environment is
OPA (no ``opa`` binary can be had here): ``tests/policies/opa_rest_server.py``, an
OPA-REST-compatible server, runs that service's command instead. The ``.env`` is made by the
command docs/operator.md shows.

Through the organisations' nodes: a statute-based exchange (Machida's tax office reads Tokyo's
parking-space certificate; Tokyo's node serves it from its declared HTTP registry, whose upstream
is the ``permits-system`` service) and a consented one (Tama Gas asks for the citizen's consent
through its own node; the citizen approves at the consent service; Gas then reads the address
from Machida's declared SQL registry, decided by Machida's OPA). The portal, desk and runner are
up. Then each database is inspected: no node's database holds another agency's codes or another
component's tables.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import MetaData, inspect, select, text

from adapters.pseudonyms import PseudonymService
from adapters.store import AdaptersBase
from alerts.store import AlertBase
from audit.store import AuditBase
from consent.store import ConsentBase
from exchange.db import is_postgres, make_engine
from exchange.ports import CITIZEN_AGENCY
from exchange.store import Base
from exchange.tokens import DevIssuer
from onceonly.wiring import COMPONENT_BRANCHES
from procedures.store import ProceduresBase
from tests.conftest import NO_PG_REASON, PG_URL
from tests.integration.compose_local import ROOT, Local, Running, load, pg_admin_url, up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(480),  # ~45 provisioning commands and 9 servers on a shared machine
]

TABLES: dict[str, MetaData] = {
    "exchange": Base.metadata,
    "audit": AuditBase.metadata,
    "consent": ConsentBase.metadata,
    "procedures": ProceduresBase.metadata,
    "adapters": AdaptersBase.metadata,
    "alerts": AlertBase.metadata,
}
AGENCIES = {  # each organisation's agencies: only their codes may be in its node's database
    "machida": ("JP/GOV/132098/resident-registry", "JP/GOV/132098/municipal-tax"),
    "tokyo": ("JP/GOV/130001/parking-permits",),
    "gas": ("JP/COM/9000000000002/gas",),
}
CODES_FILES = {  # where the central operator handed each agency's codes (compose.yaml)
    "JP/GOV/132098/resident-registry": "JP_GOV_132098/resident-registry.codes",
    "JP/GOV/132098/municipal-tax": "JP_GOV_132098/municipal-tax.codes",
    "JP/GOV/130001/parking-permits": "JP_GOV_130001/parking-permits.codes",
    "JP/COM/9000000000002/gas": "JP_COM_9000000000002/gas.codes",
}
TAX, GAS = "JP/GOV/132098/municipal-tax", "JP/COM/9000000000002/gas"
PERMIT = "JP/GOV/130001/parking-permits/permit/v1"
ADDRESS = "JP/GOV/132098/resident-registry/address/v1"
CITIZEN_KEY = "R-0001"


def docs_env_command() -> str:
    """The command docs/operator.md gives for compose's ``.env`` (its block that writes it)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "operator.md").read_text(), re.S)
    (block,) = [b for b in blocks if "> .env" in b]
    return block


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    if not (PG_URL and is_postgres(PG_URL)):
        pytest.skip(NO_PG_REASON)
    admin = pg_admin_url(PG_URL)
    try:
        psycopg.connect(admin.set(drivername="postgresql").render_as_string(False)).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {admin.host}:{admin.port} is unreachable: {exc}")
    subprocess.run(["bash", "-euo", "pipefail", "-c", docs_env_command()], cwd=tmp_path, check=True)
    env_file = dict(
        line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines() if line
    )
    with up(Local(load(), tmp_path, admin, env_file)) as run:
        yield run


def _codes(run: Running) -> dict[str, dict[str, str]]:
    """Every agency's codes by citizen key, from the files the central operator handed over."""
    handover = run.local.volume("handover")
    return {
        agency: dict(line.split("\t") for line in (handover / f).read_text().splitlines())
        for agency, f in CODES_FILES.items()
    }


def _api_key(run: Running, organisation: str, client: str) -> str:
    return (run.local.volume(f"{organisation}-data") / f"{client}.api-key").read_text().strip()


def _headers(client: str, key: str, purpose: str, subject: str) -> dict[str, str]:
    return {
        "X-Road-Client": client,
        "X-OnceOnly-Api-Key": key,
        "X-OnceOnly-Purpose": purpose,
        "X-OnceOnly-Subject": subject,
    }


def _citizen(run: Running, gas_code: str) -> str:
    """The citizen's platform id, read from the translator's store as its operator could."""
    engine = make_engine(run.local.dsn("central"))
    try:
        return PseudonymService(engine, (GAS, CITIZEN_AGENCY)).translate(
            gas_code, GAS, CITIZEN_AGENCY
        )
    finally:
        engine.dispose()


def _token(run: Running, citizen: str) -> str:
    """The citizen's own token, from the development issuer (as when they sign in at the
    portal)."""
    issuer = DevIssuer.load(
        run.local.volume("central-data") / "dev-issuer.key",
        issuer="onceonly-dev",
        audience="onceonly",
    )
    return issuer.issue(citizen, roles=("citizen",))


def _consent(run: Running, gas_code: str, key: str, citizen: str) -> dict[str, str]:
    """Gas asks through its own node, by its own code; the citizen approves."""
    now = datetime.now(UTC).replace(microsecond=0)
    terms = {
        "subject": gas_code,
        "subject_agency": "client",
        "client": GAS,
        "services": [ADDRESS.rsplit("/", 1)[0]],
        "purpose": {
            "code": "address-change",
            "text_ja": "引越しに伴うガス供給先の変更",
            "text_en": "moving the gas supply to the new address",
        },
        "fields": ["address", "moved_in_on"],
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        "mode": "one-time",
        "data_retention_days": 30,
        "legal_text_version": "2026-11",
    }
    asked = httpx.post(
        f"{run.local.url('gas')}/platform/v1/consent-requests",
        json=terms,
        headers={"X-Road-Client": GAS, "X-OnceOnly-Api-Key": key},
        timeout=20,
    )
    assert asked.status_code == 201, asked.text
    approved = httpx.post(
        f"{run.local.url('central')}/consent/v1/consent-requests/{asked.json()['id']}/approve",
        headers={"Authorization": f"Bearer {_token(run, citizen)}"},
        timeout=20,
    )
    assert approved.status_code == 200, approved.text
    consent = approved.json()
    return {"X-OnceOnly-Consent-Id": consent["id"], "X-OnceOnly-Consent": consent["artefact"]}


def _tables_and_text(run: Running, database: str) -> tuple[set[str], str]:
    """A database's tables, and every value in them as text (bytes decoded)."""
    engine = make_engine(run.local.dsn(database))
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
            meta = MetaData()
            meta.reflect(conn)
            values = [
                v.decode(errors="replace") if isinstance(v, bytes | memoryview) else str(v)
                for t in meta.sorted_tables
                for row in conn.execute(select(t))
                for v in row
            ]
    finally:
        engine.dispose()
    return tables, "\n".join(values)


def _own_tables(component: str) -> set[str]:
    return set().union(*(TABLES[b].tables for b in COMPONENT_BRANCHES[component]))


def test_compose_services_exchange_by_statute_and_consent_and_keep_agencies_apart(
    running: Running,
) -> None:
    run = running
    codes = _codes(run)
    machida, gas = run.local.url("machida"), run.local.url("gas")

    # By statute, through Tokyo's declared HTTP registry and its upstream system.
    tax = _headers(
        TAX, _api_key(run, "machida", "municipal-tax"), "taxation", codes[TAX][CITIZEN_KEY]
    )
    permit = httpx.get(f"{machida}/r1/{PERMIT}", headers=tax, timeout=20)
    assert permit.status_code == 200, permit.text
    assert permit.json() == {
        "vehicle": "軽自動車 多摩 580 あ 12-34",
        "parking_place": "東京都町田市森野2-2-22 駐車場1",
    }
    assert permit.headers["x-onceonly-basis"].startswith("statute:")

    # By consent, from Machida's declared SQL registry; without it, refused by Machida's OPA.
    gas_key = _api_key(run, "gas", "gas")
    asking = _headers(GAS, gas_key, "address-change", codes[GAS][CITIZEN_KEY])
    refused = httpx.get(f"{gas}/r1/{ADDRESS}", headers=asking, timeout=20)
    assert (refused.status_code, refused.json()["code"]) == (
        403,
        "Server.ServerProxy.AccessDenied",
    ), refused.text
    citizen = _citizen(run, codes[GAS][CITIZEN_KEY])
    consent = _consent(run, codes[GAS][CITIZEN_KEY], gas_key, citizen)
    consented = httpx.get(f"{gas}/r1/{ADDRESS}", headers=asking | consent, timeout=20)
    assert consented.status_code == 200, consented.text
    assert consented.json() == {"address": "東京都町田市森野2-2-22", "moved_in_on": "2024-04-01"}
    assert consented.headers["x-onceonly-basis"].startswith("consent:")
    policy = httpx.get(f"{run.local.url('opa')}/v1/policies/onceonly/exchange", timeout=10)
    assert policy.status_code == 200  # Machida's node put its policies into its OPA

    for service in ("portal", "desk", "runner"):
        assert httpx.get(run.local.url(service) + "/healthz", timeout=10).status_code == 200

    _each_node_holds_only_its_own_agencies_codes_and_tables(run, codes, citizen)
    _each_other_component_holds_only_its_own_tables(run)


def _each_node_holds_only_its_own_agencies_codes_and_tables(
    run: Running, codes: dict[str, dict[str, str]], citizen: str
) -> None:
    for organisation, own in AGENCIES.items():
        tables, values = _tables_and_text(run, organisation)
        assert tables == _own_tables("node"), organisation
        for agency in own:  # the exchanges above are in its log, under its own codes
            assert codes[agency][CITIZEN_KEY] in values, (organisation, agency)
        others = {c for a, by_key in codes.items() if a not in own for c in by_key.values()}
        if organisation != "machida":  # (Machida's one-stop desk knows citizens by this id)
            others.add(citizen)
        leaked = sorted(c for c in others if c in values)
        assert leaked == [], f"{organisation}'s node holds other agencies' codes: {leaked}"


def _each_other_component_holds_only_its_own_tables(run: Running) -> None:
    central, _ = _tables_and_text(run, "central")
    operator = ("central", "consent", "consent-audit", "registries", "translator-audit")
    assert central == set().union(*(_own_tables(c) for c in operator))
    procedures, _ = _tables_and_text(run, "machida_procedures")
    assert procedures == _own_tables("procedures")
    residents, _ = _tables_and_text(run, "machida_residents")
    assert residents == {"residents"}
    engine = make_engine(run.local.dsn("central"))
    try:
        with engine.connect() as conn:  # every translation is in the translator's own log
            translations = conn.execute(
                text("SELECT count(*) FROM audit_entries WHERE log_id = 'pseudonym-translator'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert translations >= 2
