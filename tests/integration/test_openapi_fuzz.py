"""schemathesis against every OpenAPI document ``onceonly serve`` publishes, every check.

Issue #14 item 10: the documents described the happy path only (undeclared 400/401/403/404/409,
405 without ``Allow``, undocumented media types, no security, the exchange routes absent). Here
one ``onceonly serve`` process — central server with the consent service and the pseudonym
translator, the four nodes, the one-stop desk — is fuzzed document by document with every
schemathesis check (``tests/integration/openapi_fuzz.py``), bounded and seeded, once with real
credentials (API keys issued at provisioning, a development-issuer token for a seeded citizen who
is also an auditor, node requests signed with a subsystem's key) and once without. Zero failures:
no 5xx, no answer the document does not declare, no schema violation.

Runs on SQLite, and on PostgreSQL (a database of its own) when DATABASE_URL is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from adapters.reference.registries import reference_config
from adapters.reference.rights import ONE_STOP
from exchange.db import is_postgres, make_engine
from exchange.identifiers import MemberId
from exchange.keystore import KeyStore
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer
from onceonly.federation import RESIDENTS_AGENCY, member_prefix, provision
from onceonly.wiring import PSEUDONYMS, pseudonym_service, registry_database_url
from tests.conftest import PG_URL, _create_pg_database
from tests.integration.openapi_fuzz import Credentials, FuzzReport, fuzz
from tests.integration.processes import Proc, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CITIZENS = 10
NODES = [member_prefix(MemberId.parse(m)) for m in sorted(reference_config().members)]
DOCUMENTS = ["/central", *NODES, "/one-stop"]
COVERED = {"/central", member_prefix(ONE_STOP.member), "/one-stop"}
"""Where the coverage phase runs with credentials. The node documents differ only in their title
and hosted clients (``tests/exchange/test_openapi_documents.py``) and are served by one code
path: the coverage phase's boundary cases run at Machida's node, which hosts the most
subsystems; at the other nodes the examples and fuzzing phases run, every check on."""


@dataclass
class Served:
    url: str
    api_keys: dict[str, str]
    token: str
    signer: MemberSigner

    def credentials(self, prefix: str) -> Credentials:
        return Credentials(
            api_keys=self.api_keys,
            token=self.token,
            node_client=ONE_STOP,
            node_signer=self.signer,
            prefix=prefix,
        )


def _a_citizen(settings: Settings) -> str:
    """The platform id of a seeded resident: the fuzzer's citizen has a record to reach."""
    residents = make_engine(registry_database_url(settings, "resident-registry"))
    with residents.connect() as conn:
        resident = conn.execute(
            text("SELECT resident_id FROM residents ORDER BY resident_id LIMIT 1")
        ).scalar_one()
    residents.dispose()
    store = make_engine(registry_database_url(settings, PSEUDONYMS))
    try:
        return pseudonym_service(settings, store).translate(
            str(resident), from_agency=RESIDENTS_AGENCY, to_agency=CITIZEN_AGENCY
        )
    finally:
        store.dispose()  # its pooled connections closed here, never left to the collector


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("openapi-fuzz")
    drop = None
    database_url = None
    if PG_URL and is_postgres(PG_URL):
        database_url, drop = _create_pg_database(PG_URL)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(data_dir=tmp / "data", database_url=database_url)
    provisioned = provision(settings, base, citizens=CITIZENS)
    issuer = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "DATABASE_URL": database_url or "",
        "COLUMNS": "200",
    }
    proc = Proc(
        "serve",
        ["serve", "--citizens", str(CITIZENS), "--data-dir", str(settings.data_dir)],
        env,
        port,
        tmp / "serve.log",
        health="/central/healthz",
    )
    proc.start()
    try:
        for node in NODES:  # the nodes fetch the registry once the server serves
            _wait_ready(base + node + "/readyz", proc)
        yield Served(
            url=base,
            api_keys=provisioned.api_keys,
            token=issuer.issue(_a_citizen(settings), roles=("citizen", "auditor")),
            signer=MemberSigner(
                load_private_key(KeyStore(settings.data_dir).subsystem_key(ONE_STOP))
            ),
        )
    finally:
        proc.stop()
        if drop is not None:
            drop()


def _wait_ready(url: str, proc: Proc, attempts: int = 300) -> None:
    for _ in range(attempts):
        if httpx.get(url, timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready: {proc.log.read_text()[-2000:]}")


def _check(report: FuzzReport) -> None:
    print(report.summary())  # the totals, for the record (pytest -s)
    assert report.errors == [], report.details()
    assert report.failures == [], report.details()
    assert report.cases > len(report.operations)


@pytest.mark.parametrize("prefix", DOCUMENTS)
def test_every_operation_passes_every_check_with_real_credentials(
    served: Served, prefix: str
) -> None:
    credentials = served.credentials(prefix)
    _check(fuzz(served.url + prefix + "/openapi.json", credentials, coverage=prefix in COVERED))


@pytest.mark.parametrize("prefix", DOCUMENTS)
def test_every_operation_passes_every_check_without_credentials(
    served: Served, prefix: str
) -> None:
    # Without credentials the coverage phase's boundary values reach only the 401 that every
    # protected operation answers first (they ran above, with credentials): examples and
    # fuzzing phases here.
    _check(fuzz(served.url + prefix + "/openapi.json", None, coverage=False))
