"""``onceonly demo`` and ``onceonly serve``: the reference federation, run locally.

The demo provisions a fresh instance (keys, registry, seeded registries) in a temporary directory,
starts the central server and every member's node on one loopback port, makes real signed
exchanges over HTTP as the departmental systems would, prints what happened, and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import text
from starlette.routing import Mount

from adapters.reference.rights import ONE_STOP
from audit.verify import verify_export
from exchange.db import make_engine
from exchange.errors import OnceOnlyError
from exchange.identifiers import ClientId
from exchange.keystore import KeyStore
from exchange.node.app import database_url
from exchange.node_requests import sign_node_request
from exchange.ports import CITIZEN_AGENCY
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer
from onceonly.federation import (
    LocalFederation,
    Provisioned,
    demo_settings,
    free_socket,
    member_prefix,
    one_stop_app,
    portal_app,
    provision,
)
from onceonly.wiring import (
    audit_log,
    consent_service,
    pseudonym_service,
    registry_database_url,
)
from procedures.consent_desk import LocalConsentDesk
from procedures.demo import demo_address_change

__all__ = ["print_api_keys", "run_demo", "run_serve"]

RESIDENTS = ClientId.parse("JP/GOV/132098/resident-registry")
TAX = ClientId.parse("JP/GOV/132098/municipal-tax")
GAS = ClientId.parse("JP/COM/9000000000002/gas")


@dataclass(frozen=True, slots=True)
class Step:
    title: str
    caller: ClientId
    service: str
    purpose: str
    subject: str | None
    expect: str
    consent_id: str | None = None
    artefact: str | None = None
    fields: str | None = None


def _first(settings: Settings, registry: str, sql: str) -> str:
    engine = make_engine(registry_database_url(settings, registry))
    try:
        with engine.connect() as conn:
            value = conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()
    return str(value)


async def _exchange(
    client: httpx.AsyncClient, fed: Provisioned, base: str, step: Step
) -> httpx.Response:
    headers = {
        "X-Road-Client": str(step.caller),
        "X-OnceOnly-Api-Key": fed.api_keys[str(step.caller)],
        "X-OnceOnly-Purpose": step.purpose,
    }
    if step.subject:
        headers["X-OnceOnly-Subject"] = step.subject
    if step.fields:
        headers["X-OnceOnly-Fields"] = step.fields
    if step.consent_id and step.artefact:
        headers["X-OnceOnly-Consent-Id"] = step.consent_id
        headers["X-OnceOnly-Consent"] = step.artefact
    url = f"{base}{member_prefix(step.caller.member)}/r1/{step.service}"
    return await client.get(url, headers=headers)


@dataclass(frozen=True, slots=True)
class Granted:
    consent_id: str
    artefact: str
    citizen_token: str


async def _grant_consent(
    client: httpx.AsyncClient, settings: Settings, base: str, gas_subject: str
) -> Granted:
    """The gas company asks for a consent (a node-signed request); the citizen approves it."""
    keys = KeyStore(settings.data_dir)
    citizen = pseudonym_service(settings).translate(
        gas_subject, from_agency=str(GAS), to_agency=CITIZEN_AGENCY
    )
    now = datetime.now(UTC)
    terms = {
        "subject": citizen,
        "client": str(GAS),
        "services": [f"{RESIDENTS}/address"],
        "purpose": {
            "code": "address-change",
            "text_ja": "引越しに伴うガス供給先の変更",
            "text_en": "moving the gas supply to the new address",
        },
        "fields": ["address", "moved_in_on"],
        "valid_from": now.isoformat(),
        "valid_until": (now + timedelta(days=30)).isoformat(),
        "mode": "standing",
        "data_retention_days": 30,
        "legal_text_version": "2026-11",
    }
    body = json.dumps(terms).encode()
    path = "/consent/v1/consent-requests"
    signer = MemberSigner(load_private_key(keys.subsystem_key(GAS)))
    headers = {
        "content-type": "application/json",
        **sign_node_request(signer, GAS, "POST", path, body, now=now),
    }
    r = await client.post(f"{base}/central{path}", content=body, headers=headers)
    r.raise_for_status()
    token = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    ).issue(citizen, roles=("citizen",))
    approved = await client.post(
        f"{base}/central/consent/v1/consent-requests/{r.json()['id']}/approve",
        headers={"authorization": f"Bearer {token}"},
    )
    approved.raise_for_status()
    consent = approved.json()
    return Granted(consent["id"], consent["artefact"], token)


async def _revoke(client: httpx.AsyncClient, base: str, consent: Granted) -> None:
    r = await client.post(
        f"{base}/central/consent/v1/consents/{consent.consent_id}/revoke",
        headers={"authorization": f"Bearer {consent.citizen_token}"},
    )
    r.raise_for_status()


async def _address_change(
    console: Console, settings: Settings, fed: Provisioned, base: str, gas_subject: str
) -> int:
    """One submission: the citizen moves; every registry concerned is updated, step by step."""
    citizen = pseudonym_service(settings).translate(
        gas_subject, from_agency=str(GAS), to_agency=CITIZEN_AGENCY
    )
    keys = KeyStore(settings.data_dir)
    await _tax_subscribes(console, settings, fed, base, gas_subject)
    run = await demo_address_change(
        f"{base}{member_prefix(ONE_STOP.member)}",
        fed.api_keys[str(ONE_STOP)],
        LocalConsentDesk(consent_service(settings)),
        citizen,
        db_url=database_url(settings, "procedures"),
        signer=MemberSigner(load_private_key(keys.subsystem_key(ONE_STOP))),
    )
    table = Table(
        title=f"one-stop address change, {run.total_s:.2f} s: one submission, every registry"
    )
    for col in ("recipient", "service", "basis", "state", "detail"):
        table.add_column(col, overflow="fold")
    for step in run.steps:
        colour = {"done": "green", "skipped": "yellow"}.get(step.state, "red")
        table.add_row(
            step.recipient,
            step.service.split("/", 4)[-1],
            step.basis,
            f"[{colour}]{step.state}[/]",
            step.detail or "",
        )
    console.print(table)
    states = {s.state for s in run.steps}
    done = sum(1 for s in run.steps if s.state == "done")
    console.log(
        f"procedure {run.procedure.status}: {done} of {len(run.steps)} steps done; "
        "the platform signed the summary certificate"
    )
    return 0 if states <= {"done", "skipped"} and done >= 2 else 1


async def _tax_subscribes(
    console: Console, settings: Settings, fed: Provisioned, base: str, gas_subject: str
) -> None:
    """The tax division subscribes, by statute, to the citizen's moves (docs/protocol.md §9): the
    address change then tells it through the resident registry's change event."""
    try:
        tax_code = pseudonym_service(settings).translate(
            gas_subject, from_agency=str(GAS), to_agency=str(TAX)
        )
    except OnceOnlyError:
        return  # not a taxpayer here: the procedure notifies the tax division if concerned
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"{base}{member_prefix(TAX.member)}/r1/{RESIDENTS}/address-changed/v1",
            headers={
                "X-Road-Client": str(TAX),
                "X-OnceOnly-Api-Key": fed.api_keys[str(TAX)],
                "X-OnceOnly-Purpose": "taxation",
                "X-OnceOnly-Subject": tax_code,
            },
        )
    console.log(
        f"the tax division subscribed to the citizen's moves (address-changed/v1): {r.status_code}"
    )


async def _audit_tour(
    console: Console, client: httpx.AsyncClient, settings: Settings, base: str, consent: Granted
) -> int:
    """An auditor verifies Machida's log offline; the citizen reads who accessed their data."""
    issuer = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    auditor = {"authorization": f"Bearer {issuer.issue('auditor-1', roles=('auditor',))}"}
    node = f"{base}{member_prefix(RESIDENTS.member)}"
    checkpoint = await client.get(f"{node}/audit/checkpoint", headers=auditor)
    export = await client.get(f"{node}/audit/export", headers=auditor)
    vkey = audit_log(settings, make_engine("sqlite://"), str(RESIDENTS.member)).vkey()
    report = verify_export(checkpoint.text, export.text.splitlines(), vkey)
    size = report.checkpoint.size if report.checkpoint else 0
    console.log(
        f"auditor: Machida's log verified offline: {report.entries} entries, signed checkpoint "
        f"of size {size}"
        if report
        else f"auditor: log NOT verified: {report.reasons}"
    )
    mine = await client.get(
        f"{node}/me/accesses", headers={"authorization": f"Bearer {consent.citizen_token}"}
    )
    items: list[dict[str, object]] = (
        mine.json().get("accesses", []) if mine.status_code == 200 else []
    )
    console.log(f"citizen: {len(items)} entries in 'who accessed my data' on Machida's node")
    return 0 if report and mine.status_code == 200 and items else 1


async def run_demo(console: Console, *, data_dir: Path | None, citizens: int) -> int:
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="onceonly-demo-"))
            )
        settings = demo_settings(Settings(data_dir=data_dir, database_url=None))
        sock = free_socket()
        federation = LocalFederation(settings, sock)
        console.rule("[bold]onceonly demo[/bold] — Machida city's once-only exchange")
        with console.status("provisioning keys, the central registry and the registries…"):
            fed = provision(
                settings, federation.base_url, citizens=citizens, progress=lambda m: console.log(m)
            )
        started = asyncio.Event()
        server = asyncio.create_task(federation.serve(started))
        await started.wait()
        console.log(
            f"central server and {len(federation.nodes)} member nodes on {federation.base_url}"
        )
        tax_subject = _first(
            settings,
            "municipal-tax",
            "SELECT taxpayer_id FROM taxpayers ORDER BY taxpayer_id LIMIT 1",
        )
        gas_subject = _first(
            settings, "gas", "SELECT customer_id FROM gas_contracts ORDER BY customer_id LIMIT 1"
        )
        failures = 0
        table = Table(title="signed exchanges through the nodes")
        for col in ("step", "caller → service", "status", "basis / reason", "data"):
            table.add_column(col, overflow="fold")

        async def run(step: Step) -> None:
            nonlocal failures
            r = await _exchange(client, fed, federation.base_url, step)
            ok = (r.status_code == 200) == step.expect.startswith("allowed")
            failures += 0 if ok else 1
            body = r.json() if "json" in r.headers.get("content-type", "") else {}
            basis = r.headers.get("x-onceonly-basis") or body.get("code", "")
            data = body if r.status_code == 200 else body.get("detail", "")
            if body.get("reasons"):
                data = f"{data}: {'; '.join(body['reasons'])}"
            table.add_row(
                step.title,
                f"{step.caller.subsystem} → {step.service.split('/', 4)[-1]}",
                f"[{'green' if r.status_code == 200 else 'yellow'}]{r.status_code}[/]",
                str(basis),
                str(data),
            )

        async with httpx.AsyncClient(timeout=30) as client:
            await run(
                Step(
                    "Tax division reads a taxpayer's registered address",
                    TAX,
                    f"{RESIDENTS}/address/v1",
                    "taxation",
                    tax_subject,
                    "allowed",
                )
            )
            await run(
                Step(
                    "Gas company asks for a resident's personal record",
                    GAS,
                    f"{RESIDENTS}/person/v1",
                    "address-change",
                    gas_subject,
                    "refused: no access right",
                )
            )
            await run(
                Step(
                    "Tax division asks with a purpose the service does not declare",
                    TAX,
                    f"{RESIDENTS}/address/v1",
                    "marketing",
                    tax_subject,
                    "refused: purpose",
                )
            )
            consent = await _grant_consent(client, settings, federation.base_url, gas_subject)
            console.log(
                f"the citizen approved the gas company's consent request: {consent.consent_id}"
            )
            with_consent = Step(
                "Gas company reads the address, with the citizen's consent",
                GAS,
                f"{RESIDENTS}/address/v1",
                "address-change",
                gas_subject,
                "allowed",
                consent.consent_id,
                consent.artefact,
                "address,moved_in_on",
            )
            await run(with_consent)
            await _revoke(client, federation.base_url, consent)
            console.log("the citizen revoked that consent")
            await run(
                Step(
                    "…and again after the citizen revoked it",
                    GAS,
                    f"{RESIDENTS}/address/v1",
                    "address-change",
                    gas_subject,
                    "refused: consent revoked",
                    consent.consent_id,
                    consent.artefact,
                    "address,moved_in_on",
                )
            )
        console.print(table)
        failures += await _address_change(console, settings, fed, federation.base_url, gas_subject)
        async with httpx.AsyncClient(timeout=60) as client:
            failures += await _audit_tour(console, client, settings, federation.base_url, consent)
        federation.stop()
        await server
        sock.close()
        console.rule(
            "done: "
            + ("every step behaved as expected" if not failures else f"{failures} unexpected")
        )
        return 1 if failures else 0
    return 1


def print_api_keys(console: Console, base_url: str, api_keys: dict[str, str]) -> None:
    """The departmental systems' API keys, shown once: one line each, never cut or wrapped to
    the terminal's width (a table would cut a key at 80 columns)."""
    console.print("API keys of the departmental systems (shown once):")
    for client, key in sorted(api_keys.items()):
        node = base_url + member_prefix(ClientId.parse(client).member)
        console.print(f"  {escape(client)}  node {node}", soft_wrap=True, highlight=False)
        console.print(f"    {key}", soft_wrap=True, highlight=False, markup=False)


async def run_serve(console: Console, settings: Settings, *, port: int, citizens: int) -> None:
    settings = demo_settings(settings)
    sock = free_socket(port=port)
    host, bound = sock.getsockname()[:2]
    base = f"http://{host}:{bound}"
    fed = provision(settings, base, citizens=citizens, progress=lambda m: console.log(m))
    desk = one_stop_app(
        settings, base + member_prefix(ONE_STOP.member), fed.api_keys[str(ONE_STOP)]
    )
    portal = portal_app(settings, desk)
    federation = LocalFederation(
        settings, sock, extra_mounts=[Mount("/one-stop", app=desk), Mount("/portal", app=portal)]
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, federation.stop)
    started = asyncio.Event()
    server = asyncio.create_task(federation.serve(started))
    await started.wait()
    console.print(f"onceonly is running on {federation.base_url} (Ctrl-C stops it)")
    console.print(f"portal (citizens and auditors): {federation.base_url}/portal/")
    print_api_keys(console, federation.base_url, fed.api_keys)
    await server
