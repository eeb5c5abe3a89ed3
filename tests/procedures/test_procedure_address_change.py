"""The one-stop address change end to end, over a real federation (nodes on loopback ports):
happy path through the citizen API, declined consent, a provider down during the run, a runner
that dies mid-procedure, duplicate submissions, bad input and someone else's procedure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.reference.registries import ELECTRICITY_MEMBER
from exchange.signing import MemberVerifier
from exchange.tokens import DevIssuer
from exchange.web.problems import install_problem_handlers
from procedures.address_change import AddressChangeService
from procedures.api import build_router
from procedures.certificate import verify_certificate
from procedures.consent_desk import LocalConsentDesk
from procedures.demo import demo_address_change
from procedures.model import AddressChangeInput, ConfirmInput, ProcedureView, StepState
from procedures.runner import ProcedureRunner
from procedures.store import StepRow
from tests.procedures.helpers import Federation, utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_ADDRESS = "東京都町田市原町田三丁目4番5号"
ELECTRICITY_NODE = ELECTRICITY_MEMBER


async def drain(runner: ProcedureRunner, *, rounds: int = 20, pause_s: float = 0.0) -> None:
    """Run until nothing is due (or ``rounds`` is reached)."""
    for _ in range(rounds):
        if await runner.run_once() == 0:
            if pause_s == 0:
                return
            await asyncio.sleep(pause_s)


def _rich_citizen(fed: Federation) -> str:
    found = fed.citizens_in(["resident-registry", "water", "electricity", "gas"])
    assert found, "the seed has households with water, electricity and gas contracts"
    return found[0]


def _supply_address(fed: Federation, registry: str, citizen: str) -> str:
    table = {
        "electricity": "electricity_contracts",
        "gas": "gas_contracts",
        "water": "water_contracts",
    }
    rows = fed.registry_rows(
        registry,
        f"SELECT supply_address FROM {table[registry]} WHERE customer_id = :k",  # noqa: S608
        k=fed.local_pseudonym(citizen, registry),
    )
    return str(rows[0]["supply_address"])


async def _start_and_confirm(
    service: AddressChangeService,
    citizen: str,
    consents: dict[str, Literal["approve", "decline"]],
) -> tuple[ProcedureView, ProcedureView]:
    """Start an address change to ``NEW_ADDRESS`` today and confirm it: (preview, confirmed)."""
    view = await service.start(
        citizen,
        AddressChangeInput(move_date=utc_now().date(), address=NEW_ADDRESS),
        now=utc_now(),
    )
    confirmed = service.confirm(citizen, view.id, ConfirmInput(consents=consents), now=utc_now())
    return view, confirmed


def _idempotency_records(fed: Federation, registry: str, key: str) -> int:
    rows = fed.registry_rows(
        registry,
        "SELECT COUNT(*) AS n FROM adapters_idempotency WHERE idempotency_key = :k",
        k=key,
    )
    return int(rows[0]["n"])


def _step_keys(fed: Federation, procedure_id: str) -> dict[str, str]:
    with Session(fed.procedures_engine) as s:
        return {
            r.recipient: r.idempotency_key
            for r in s.scalars(select(StepRow).where(StepRow.procedure_id == procedure_id))
        }


@asynccontextmanager
async def citizen_api(fed: Federation) -> AsyncIterator[tuple[httpx.AsyncClient, DevIssuer]]:
    issuer = DevIssuer.load_or_create(
        fed.settings.data_dir, issuer="onceonly-dev", audience="onceonly"
    )
    async with fed.client() as one_stop:
        app = FastAPI()
        install_problem_handlers(app)
        app.include_router(build_router(fed.service(one_stop), issuer.verifier(), clock=utc_now))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://portal"
        ) as http:
            yield http, issuer


def _auth(issuer: DevIssuer, subject: str, *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + issuer.issue(subject, roles=roles or ("citizen",))}


def test_address_change_updates_every_registry_concerned_and_certifies_it(
    federation: Federation,
) -> None:
    fed = federation
    citizen = _rich_citizen(fed)
    other = fed.citizens_in(["resident-registry"])[-1]
    assert other != citizen

    async def scenario() -> dict[str, Any]:
        async with citizen_api(fed) as (http, issuer), fed.client() as client:
            me = _auth(issuer, citizen)
            start = await http.post(
                "/procedures/address-change",
                json={"move_date": utc_now().date().isoformat(), "address": NEW_ADDRESS},
                headers=me,
            )
            assert start.status_code == 201, start.text
            preview = start.json()
            by = {r["recipient"]: r for r in preview["recipients"]}
            # Preview: every party concerned, the exact fields, and the basis of each.
            assert {"resident-registry", "municipal-tax", "water", "electricity", "gas"} <= set(by)
            assert by["resident-registry"]["basis"] == "statute"
            assert by["resident-registry"]["statute"]
            assert "住民基本台帳法" in by["resident-registry"]["statute_title_ja"]
            assert by["resident-registry"]["fields"]["address"] == NEW_ADDRESS
            assert by["electricity"]["basis"] == "consent"
            assert by["electricity"]["consent_request_id"]
            assert set(by["gas"]["fields"]) == {"supply_address", "supply_change_on"}

            pid = preview["id"]
            assert (
                await http.get(f"/procedures/{pid}", headers=_auth(issuer, other))
            ).status_code == 404
            confirm = await http.post(
                f"/procedures/{pid}/confirm",
                json={"consents": {"electricity": "approve", "gas": "approve"}},
                headers=me,
            )
            assert confirm.status_code == 200, confirm.text
            assert confirm.json()["status"] == "running"
            assert (await http.get(f"/procedures/{pid}/certificate", headers=me)).status_code == 409

            await drain(fed.runner(client))

            status = (await http.get(f"/procedures/{pid}", headers=me)).json()
            staff = await http.get(f"/procedures/{pid}", headers=_auth(issuer, "staff-1", "staff"))
            assert staff.status_code == 200
            assert staff.json()["status"] == status["status"]
            cert = (await http.get(f"/procedures/{pid}/certificate", headers=me)).json()
            return {"status": status, "cert": cert}

    out = asyncio.run(scenario())
    status, cert = out["status"], out["cert"]
    assert status["status"] == "done"
    states = {s["recipient"]: s["state"] for s in status["steps"]}
    assert states["resident-registry"] == "done"
    assert states["electricity"] == "done"
    assert states["gas"] == "done"
    assert states["water"] == "done"
    assert set(states.values()) <= {"done", "skipped"}
    # The registries hold the new address, each once.
    resident = fed.registry_rows(
        "resident-registry",
        "SELECT address FROM residents WHERE resident_id = :k",
        k=fed.local_pseudonym(citizen, "resident-registry"),
    )
    assert resident[0]["address"] == NEW_ADDRESS
    for registry in ("water", "electricity", "gas"):
        assert _supply_address(fed, registry, citizen) == NEW_ADDRESS
    # The signed summary verifies with the platform key, and not once altered.
    verifier = MemberVerifier(fed.signer.public_key)
    verify_certificate(cert, verifier)
    assert cert["payload"]["new_address"] == NEW_ADDRESS
    assert {s["recipient"] for s in cert["payload"]["steps"]} == set(states)
    tampered = {**cert, "payload": {**cert["payload"], "new_address": "東京都町田市森野1番"}}
    with pytest.raises(Exception, match="does not verify"):
        verify_certificate(tampered, verifier)


def test_declined_consent_skips_that_company_and_the_rest_proceed(federation: Federation) -> None:
    fed = federation
    citizen = _rich_citizen(fed)
    gas_before = _supply_address(fed, "gas", citizen)

    async def scenario() -> list[Any]:
        async with fed.client() as client:
            service = fed.service(client)
            view, confirmed = await _start_and_confirm(
                service, citizen, {"electricity": "approve", "gas": "decline"}
            )
            gas = next(s for s in confirmed.steps if s.recipient == "gas")
            assert gas.state is StepState.SKIPPED
            assert gas.last_error == "consent declined by the citizen"
            await drain(fed.runner(client))
            return list(service.get(view.id, subject=citizen).steps)

    steps = {s.recipient: s for s in asyncio.run(scenario())}
    assert steps["gas"].state is StepState.SKIPPED
    assert steps["electricity"].state is StepState.DONE
    assert steps["resident-registry"].state is StepState.DONE
    assert _supply_address(fed, "gas", citizen) == gas_before
    assert _supply_address(fed, "electricity", citizen) == NEW_ADDRESS


def test_provider_down_delays_its_step_which_completes_once_when_back(
    federation: Federation,
) -> None:
    fed = federation
    citizen = _rich_citizen(fed)

    async def scenario() -> tuple[str, Any]:
        async with fed.client() as client:
            service = fed.service(client)
            view, _ = await _start_and_confirm(
                service, citizen, {"electricity": "approve", "gas": "approve"}
            )
            runner = fed.runner(client)
            await asyncio.to_thread(fed.stop, ELECTRICITY_NODE)
            try:
                await drain(runner)
                waiting = service.get(view.id, subject=citizen)
                elec = next(s for s in waiting.steps if s.recipient == "electricity")
                assert elec.state is StepState.PENDING
                assert elec.attempts >= 1
                assert elec.last_error
                assert "502" in elec.last_error
                assert waiting.status.value == "running"
                others = [s for s in waiting.steps if s.recipient != "electricity"]
                assert all(s.state in (StepState.DONE, StepState.SKIPPED) for s in others)
            finally:
                await asyncio.to_thread(fed.start, ELECTRICITY_NODE)
            await drain(runner, rounds=40, pause_s=0.1)
            return view.id, service.get(view.id, subject=citizen)

    pid, done = asyncio.run(scenario())
    assert done.status.value == "done"
    elec = next(s for s in done.steps if s.recipient == "electricity")
    assert elec.state is StepState.DONE
    assert elec.attempts >= 2
    assert _supply_address(fed, "electricity", citizen) == NEW_ADDRESS
    assert _idempotency_records(fed, "electricity", _step_keys(fed, pid)["electricity"]) == 1


def test_runner_killed_after_sending_is_resumed_by_another_without_applying_twice(
    federation: Federation,
) -> None:
    fed = federation
    citizen = _rich_citizen(fed)

    async def scenario() -> tuple[str, Any, int]:
        async with fed.client() as client:
            service = fed.service(client)
            view, _ = await _start_and_confirm(
                service, citizen, {"electricity": "approve", "gas": "approve"}
            )
            doomed = fed.runner(client, runner_id="doomed", lease_s=30)
            claimed = doomed.claim(utc_now())
            assert [c.recipient for c in claimed] == ["resident-registry"]
            sent = await doomed.execute(claimed[0])  # the registry applies it ...
            assert sent.kind == "ok"
            # ... and the runner dies before recording it: the step stays "running" on its lease.
            survivor = fed.runner(client, runner_id="survivor", lease_s=30)
            assert survivor.claim(utc_now()) == []  # the lease still holds
            later = utc_now() + timedelta(seconds=31)
            resumed = survivor.claim(later)
            assert [c.recipient for c in resumed] == ["resident-registry"]
            assert resumed[0].attempt == 2
            again = await survivor.execute(resumed[0])
            assert again.kind == "ok"
            assert again.data == sent.data
            assert survivor.complete(resumed[0], again, later) == "done"
            # The dead runner's late completion (had it come back) is ignored: lease lost.
            assert doomed.complete(claimed[0], sent, later) is None
            await drain(survivor)
            return view.id, service.get(view.id, subject=citizen), resumed[0].attempt

    pid, done, _ = asyncio.run(scenario())
    assert done.status.value == "done"
    keys = _step_keys(fed, pid)
    assert _idempotency_records(fed, "resident-registry", keys["resident-registry"]) == 1
    for registry in ("water", "electricity", "gas"):
        assert _idempotency_records(fed, registry, keys[registry]) == 1


def test_duplicate_submission_is_recognised_and_not_run_twice(federation: Federation) -> None:
    fed = federation
    citizen = _rich_citizen(fed)

    async def scenario() -> None:
        async with citizen_api(fed) as (http, issuer), fed.client() as client:
            me = {**_auth(issuer, citizen), "Idempotency-Key": "form-42"}
            body = {"move_date": utc_now().date().isoformat(), "address": NEW_ADDRESS}
            first = await http.post("/procedures/address-change", json=body, headers=me)
            second = await http.post("/procedures/address-change", json=body, headers=me)
            assert first.status_code == 201
            assert second.status_code == 200
            assert second.json()["id"] == first.json()["id"]
            assert second.json()["duplicate"] is True
            pid = first.json()["id"]
            decisions = {"consents": {"electricity": "approve", "gas": "approve"}}
            one = await http.post(f"/procedures/{pid}/confirm", json=decisions, headers=me)
            two = await http.post(f"/procedures/{pid}/confirm", json=decisions, headers=me)
            assert one.status_code == 200
            assert two.status_code == 200
            assert two.json()["duplicate"] is True
            assert len(two.json()["steps"]) == len(one.json()["steps"])
            await drain(fed.runner(client))
            # Submitting again after it ran still answers with the same, finished procedure.
            third = await http.post("/procedures/address-change", json=body, headers=me)
            assert third.json()["id"] == pid
            assert third.json()["status"] == "done"

    asyncio.run(scenario())


def test_bad_input_is_answered_with_clear_problems(federation: Federation) -> None:
    fed = federation
    citizen = _rich_citizen(fed)
    other = fed.citizens_in(["resident-registry"])[-1]

    async def scenario() -> None:
        async with citizen_api(fed) as (http, issuer):
            me = _auth(issuer, citizen)
            today = utc_now().date()

            async def start(body: dict[str, Any]) -> httpx.Response:
                return await http.post("/procedures/address-change", json=body, headers=me)

            osaka = await start({"move_date": today.isoformat(), "address": "大阪府大阪市北区1-1"})
            assert osaka.status_code == 400
            assert osaka.json()["code"] == "Client.InvalidAddress"
            assert osaka.headers["content-type"].startswith("application/problem+json")
            bare = await start({"move_date": today.isoformat(), "address": "東京都町田市"})
            assert bare.json()["code"] == "Client.InvalidAddress"
            past = await start({"move_date": "2020-01-01", "address": NEW_ADDRESS})
            assert past.status_code == 400
            assert past.json()["code"] == "Client.InvalidMoveDate"
            ahead = (today + timedelta(days=200)).isoformat()
            future = await start({"move_date": ahead, "address": NEW_ADDRESS})
            assert future.json()["code"] == "Client.InvalidMoveDate"
            garbage = await start({"move_date": "yesterday", "address": NEW_ADDRESS})
            assert garbage.status_code == 400
            extra = await start({"address": NEW_ADDRESS, "move_date": today.isoformat(), "x": 1})
            assert extra.status_code == 400
            unknown_property = await start({"property_number": "0000000000000"})
            assert unknown_property.json()["code"] == "Client.UnknownProperty"
            no_token = await http.post("/procedures/address-change", json={})
            assert no_token.status_code == 401

            mine = await start({"move_date": today.isoformat(), "address": NEW_ADDRESS})
            pid = mine.json()["id"]
            theirs = _auth(issuer, other)
            for r in (
                await http.get(f"/procedures/{pid}", headers=theirs),
                await http.post(f"/procedures/{pid}/confirm", json={}, headers=theirs),
                await http.get(f"/procedures/{pid}/certificate", headers=theirs),
                await http.get("/procedures/not-a-procedure", headers=me),
            ):
                assert r.status_code == 404
                assert r.json()["code"] == "Client.NotFound"
            missing = await http.post(f"/procedures/{pid}/confirm", json={}, headers=me)
            assert missing.json()["code"] == "Client.ConsentDecisionMissing"
            staff = _auth(issuer, "staff-1", "staff")
            refused = await http.post(f"/procedures/{pid}/confirm", json={}, headers=staff)
            assert refused.status_code == 403

    asyncio.run(scenario())


def test_property_from_the_land_registry_prefills_the_new_address(federation: Federation) -> None:
    fed = federation
    purchases = [
        p for p in fed.recent_purchases() if p[0] in fed.citizens_in(["resident-registry"])
    ]
    assert purchases, "the seed has a recent home purchase"
    citizen, number, location = purchases[0]

    async def scenario() -> Any:
        async with fed.client() as client:
            service = fed.service(client)
            offered = await service.recent_properties(citizen, now=utc_now())
            assert number in {p["property_number"] for p in offered}
            return await service.start(
                citizen,
                AddressChangeInput(property_number=number, move_date=utc_now().date()),
                now=utc_now(),
            )

    view = asyncio.run(scenario())
    assert view.new_address == location
    assert view.address_source == "land-registry"
    resident = next(r for r in view.recipients if r.recipient == "resident-registry")
    assert resident.fields["address"] == location


def test_concurrent_runners_never_run_a_step_twice(federation: Federation) -> None:
    fed = federation
    citizens = fed.citizens_in(["resident-registry", "water"])[:3]

    async def scenario() -> list[Any]:
        async with fed.client() as client:
            service = fed.service(client)
            ids = []
            for c in citizens:
                view = await service.start(
                    c,
                    AddressChangeInput(move_date=utc_now().date(), address=NEW_ADDRESS),
                    now=utc_now(),
                )
                private = {r.recipient: "approve" for r in view.recipients if r.consent_request_id}
                service.confirm(c, view.id, ConfirmInput(consents=private), now=utc_now())  # type: ignore[arg-type]
                ids.append((c, view.id))
            runners = [fed.runner(client, runner_id=f"r{i}") for i in range(3)]
            for _ in range(10):
                counts = await asyncio.gather(*(r.run_once() for r in runners))
                if sum(counts) == 0:
                    break
            return [service.get(pid, subject=c) for c, pid in ids]

    for view in asyncio.run(scenario()):
        assert view.status.value == "done"
        assert all(s.attempts <= 1 for s in view.steps)


def test_demo_runs_one_address_change_end_to_end_and_reports_every_step(
    federation: Federation,
) -> None:
    fed = federation
    residents = set(fed.citizens_in(["resident-registry"]))
    citizen = next(c for c, _, _ in fed.recent_purchases() if c in residents)

    run = asyncio.run(
        demo_address_change(
            fed.one_stop_url,
            fed.api_keys["JP/GOV/132098/one-stop"],
            LocalConsentDesk(fed.consents),
            citizen,
            db_url=str(fed.procedures_engine.url.render_as_string(hide_password=False)),
            signer=fed.signer,
        )
    )
    assert run.procedure.address_source == "land-registry"
    assert run.procedure.status.value == "done"
    assert run.steps[0].recipient == "resident-registry"
    assert run.steps[0].state is StepState.DONE
    assert run.steps[0].exchange_s is not None
    assert run.certificate is not None
    verify_certificate(run.certificate, MemberVerifier(fed.signer.public_key))


def test_a_subscribed_division_is_told_by_the_change_event_not_by_a_second_exchange(
    federation: Federation,
) -> None:
    """Issue 17 item 3: the tax division subscribed to the resident registry's address-changed
    event; the procedure's resident step publishes the move, the registry's signed answer names
    the tax division as told, and the procedure sends the tax division no notification of its own
    — the division learns of the move once, from its change feed."""
    fed = federation
    citizen = _rich_citizen(fed)
    tax = "JP/GOV/132098/municipal-tax"
    tax_code = fed.local_pseudonym(citizen, "municipal-tax")
    headers = {
        "X-Road-Client": tax,
        "X-OnceOnly-Api-Key": fed.api_keys[tax],
        "X-OnceOnly-Purpose": "taxation",
        "X-OnceOnly-Subject": tax_code,
    }
    event = "JP/GOV/132098/resident-registry/address-changed/v1"
    made = httpx.post(f"{fed.one_stop_url}/r1/{event}", headers=headers, timeout=20)
    assert made.status_code == 201, made.text

    async def scenario() -> str:
        async with fed.client() as client:
            service = fed.service(client)
            _, confirmed = await _start_and_confirm(
                service, citizen, {"electricity": "decline", "gas": "decline"}
            )
            await drain(fed.runner(client))
            return confirmed.id

    pid = asyncio.run(scenario())
    with Session(fed.procedures_engine) as s:
        steps = {
            r.recipient: r for r in s.scalars(select(StepRow).where(StepRow.procedure_id == pid))
        }
    assert steps["resident-registry"].state == StepState.DONE.value
    told = steps["municipal-tax"]
    assert told.state == StepState.DONE.value
    assert told.result == {"told_by": steps["resident-registry"].service, "event": "change event"}
    assert _idempotency_records(fed, "municipal-tax", told.idempotency_key) == 0
    feed = httpx.get(
        f"{fed.one_stop_url}/changes/v1",
        headers={k: v for k, v in headers.items() if k.startswith(("X-Road", "X-OnceOnly-Api"))},
        timeout=20,
    )
    for _ in range(100):
        if feed.json()["changes"]:
            break
        time.sleep(0.1)
        feed = httpx.get(feed.request.url, headers=feed.request.headers, timeout=20)
    (change,) = feed.json()["changes"]
    assert change["subject"] == tax_code
    assert change["change"]["address"] == NEW_ADDRESS
