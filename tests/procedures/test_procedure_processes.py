"""The address change across real processes: ``python -m onceonly central`` (with the consent
service) and one ``python -m onceonly node`` per member, composed exactly as deployed. The
one-stop desk uses the same consent store as the central consent service; one provider's node
is stopped during the run and started again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from adapters.reference.rights import ONE_STOP
from exchange.db import make_engine, upgrade
from exchange.keystore import KeyStore
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from onceonly.wiring import consent_service
from procedures.address_change import AddressChangeService
from procedures.consent_desk import LocalConsentDesk
from procedures.model import AddressChangeInput, ConfirmInput, StepState
from procedures.one_stop import OneStopClient
from procedures.runner import ProcedureRunner
from tests.integration.processes import Cluster, provisioned_cluster, running
from tests.procedures.helpers import MEMBERS, SEED, RegistryLook, utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_ADDRESS = "東京都町田市森野二丁目2番22号"
GAS = "JP/COM/9000000000002"


@pytest.fixture
def processes(tmp_path: Path, db_url: str) -> Iterator[tuple[Cluster, Settings, dict[str, str]]]:
    cluster, settings, api_keys = provisioned_cluster(
        tmp_path / "data",
        MEMBERS,
        log=tmp_path / "processes.log",
        database_url=db_url if db_url.startswith("postgresql") else None,
        citizens=40,
        seed_value=SEED,
        env={"ONCEONLY_REGISTRY_REFRESH_S": "5"},
    )
    gen = running(cluster)
    cl = next(gen)
    for p in cl.procs.values():
        p.start()
    yield cl, settings, api_keys
    gen.close()


def test_address_change_across_node_processes_waits_for_a_stopped_provider(
    processes: tuple[Cluster, Settings, dict[str, str]], db_url: str
) -> None:
    cluster, settings, keys = processes
    # The registries and pseudonyms, looked into as their departments would (helpers' queries).
    look = RegistryLook(settings)
    citizen = look.citizens_in(["resident-registry", "water", "gas"])[0]
    consents = consent_service(settings)
    engine = make_engine(db_url)
    upgrade(engine)
    signer = MemberSigner(load_private_key(KeyStore(settings.data_dir).subsystem_key(ONE_STOP)))
    machida = cluster.procs["JP/GOV/132098"]

    async def scenario() -> Any:
        async with OneStopClient(machida.url, keys[str(ONE_STOP)]) as client:
            service = AddressChangeService(engine, client, LocalConsentDesk(consents))
            view = await service.start(
                citizen,
                AddressChangeInput(move_date=utc_now().date(), address=NEW_ADDRESS),
                now=utc_now(),
            )
            by = {r.recipient: r for r in view.recipients}
            assert by["gas"].basis == "consent"
            decisions: dict[str, Literal["approve", "decline"]] = {
                r.recipient: "approve" for r in view.recipients if r.consent_request_id
            }
            service.confirm(citizen, view.id, ConfirmInput(consents=decisions), now=utc_now())
            runner = ProcedureRunner(engine, client, signer, base_backoff_s=0.05, max_backoff_s=0.2)
            await asyncio.to_thread(cluster.procs[GAS].stop)
            for _ in range(6):
                await runner.run_once()
                await asyncio.sleep(0.05)
            waiting = service.get(view.id, subject=citizen)
            gas = next(s for s in waiting.steps if s.recipient == "gas")
            assert gas.state is StepState.PENDING, gas
            await asyncio.to_thread(cluster.procs[GAS].start)
            for _ in range(60):
                if service.get(view.id, subject=citizen).certificate_available:
                    break
                await runner.run_once()
                await asyncio.sleep(0.1)
            return service.get(view.id, subject=citizen)

    try:
        done = asyncio.run(scenario())
    finally:
        engine.dispose()
    states = {s.recipient: (s.state, s.last_error) for s in done.steps}
    assert done.status.value == "done", states
    assert states["resident-registry"][0] is StepState.DONE
    assert states["gas"][0] is StepState.DONE
    rows = look.registry_rows(
        "gas",
        "SELECT supply_address FROM gas_contracts WHERE customer_id = :k",
        k=look.local_pseudonym(citizen, "gas"),
    )
    assert rows[0]["supply_address"] == NEW_ADDRESS
