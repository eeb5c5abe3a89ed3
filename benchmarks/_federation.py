"""Two member nodes and the central server as processes, ready for load (benchmarks only).

Machida's node serves the resident registry; the land registry's node (JP/GOV/000001) consumes
its address service under a benchmark statute. On PostgreSQL (``DATABASE_URL``) everything runs
on a throw-away database created from it and dropped by ``stop``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from exchange.db import make_engine  # noqa: E402
from exchange.identifiers import ClientId, MemberId, ServiceId  # noqa: E402
from exchange.node.app import database_url  # noqa: E402
from exchange.ports import CITIZEN_AGENCY  # noqa: E402
from exchange.registry_admin import RegistryAdmin  # noqa: E402
from onceonly.wiring import pseudonym_service, registry_database_url  # noqa: E402
from tests.conftest import _create_pg_database  # noqa: E402
from tests.integration.processes import Proc, provisioned_cluster  # noqa: E402

MACHIDA = MemberId.parse("JP/GOV/132098")
LAND = MemberId.parse("JP/GOV/000001")
CONSUMER = ClientId.parse("JP/GOV/000001/land-registry")
SERVICE = ServiceId.parse("JP/GOV/132098/resident-registry/address/v1")


@dataclass
class TwoNodes:
    central: Proc
    provider: Proc
    consumer: Proc
    url: str
    headers: dict[str, str]
    database_url: str | None = None  # the throw-away PostgreSQL database, if any
    _drop: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def procs(self) -> list[Proc]:
        return [self.central, self.provider, self.consumer]

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        if self._drop is not None:
            self._drop()


def start_two_nodes(
    tmp: Path, *, citizens: int = 200, env: dict[str, str] | None = None, workers: int = 1
) -> TwoNodes:
    """Provision, start and return the two nodes (PostgreSQL when ``DATABASE_URL`` is set)."""
    pg_url, drop = None, None
    if os.environ.get("DATABASE_URL"):
        pg_url, drop = _create_pg_database(os.environ["DATABASE_URL"])
    cluster, settings, api_keys = provisioned_cluster(
        tmp / "data",
        (MACHIDA, LAND),
        log=tmp / "processes.log",
        database_url=pg_url,
        citizens=citizens,
        env=env,
    )
    admin = RegistryAdmin(make_engine(database_url(settings, "central")))
    admin.grant(CONSUMER, SERVICE)
    admin.add_statute(
        "bench-1",
        service=SERVICE,
        client=CONSUMER,
        purposes=("taxation",),
        fields=("address", "moved_in_on"),
        ordinance="jp-benchmark/art1",
    )
    engine = make_engine(registry_database_url(settings, "resident-registry"))
    with engine.connect() as conn:
        resident = conn.execute(text("SELECT resident_id FROM residents LIMIT 1")).scalar_one()
    engine.dispose()
    pseudonyms = pseudonym_service(settings)
    citizen = pseudonyms.translate(
        resident, from_agency="JP/GOV/132098/resident-registry", to_agency=CITIZEN_AGENCY
    )
    subject = pseudonyms.translate(citizen, from_agency=CITIZEN_AGENCY, to_agency=str(CONSUMER))
    nodes = TwoNodes(
        central=cluster.procs["central"],
        provider=cluster.procs[str(MACHIDA)],
        consumer=cluster.procs[str(LAND)],
        url="",
        headers={
            "X-Road-Client": str(CONSUMER),
            "X-OnceOnly-Api-Key": api_keys[str(CONSUMER)],
            "X-OnceOnly-Purpose": "taxation",
            "X-OnceOnly-Subject": subject,
            "X-OnceOnly-Fields": "address,moved_in_on",
        },
        database_url=pg_url,
        _drop=drop,
    )
    for p in (nodes.provider, nodes.consumer):
        p.args += ["--workers", str(workers)]
    try:
        for p in nodes.procs:
            p.start()
    except BaseException:
        nodes.stop()
        raise
    nodes.url = f"{nodes.consumer.url}/r1/{SERVICE}"
    return nodes
