"""The address change through the portal, against a running federation (real nodes on loopback,
the real one-stop desk and runner): start, preview, consent for the private companies, confirm,
and the status page that refreshes itself until every step is final. The portal reaches the desk
in-process (``onceonly serve``) or over the desk's HTTP API (``onceonly portal``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.routing import Mount

from audit.checkpoint import NoteSigner
from audit.log import TransparencyLog
from exchange.db import make_engine, upgrade
from exchange.settings import Settings
from exchange.tokens import DevIssuer
from exchange.web.problems import install_problem_handlers
from portal import build_portal
from portal.local import LocalConsent, LocalDesk, local_logs
from portal.ports import ProcedureDesk
from portal.remote import RemoteDesk
from procedures.address_change import AddressChangeService
from procedures.api import build_router
from tests.procedures.helpers import Federation, running_federation, utc_now

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_ADDRESS = "東京都町田市原町田三丁目4番5号"
BASE = "https://portal.test"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def federation(tmp_path: Path, db_url: str) -> Iterator[Federation]:
    yield from running_federation(tmp_path, db_url)


@contextlib.asynccontextmanager
async def desk_for(
    how: str, service: AddressChangeService, issuer: DevIssuer
) -> AsyncIterator[ProcedureDesk]:
    """The desk in-process, or its procedures API served on 127.0.0.1 by uvicorn on this loop."""
    if how == "in-process":
        yield LocalDesk(service)
        return
    api = FastAPI()
    install_problem_handlers(api)
    api.include_router(build_router(service, issuer.verifier(), clock=utc_now))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api, log_level="error", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn has no event)
        await asyncio.sleep(0.02)
    try:
        with httpx.Client(timeout=20) as http:
            yield RemoteDesk(http, f"http://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.mark.parametrize("desk", ["in-process", "over-http"])
def test_citizen_runs_an_address_change_and_watches_it_finish(
    federation: Federation, tmp_path: Path, desk: str
) -> None:
    fed = federation
    citizen = fed.citizens_in(["resident-registry", "water", "electricity", "gas"])[0]
    other = fed.citizens_in(["resident-registry"])[-1]
    assert other != citizen
    issuer = DevIssuer.load_or_create(tmp_path, issuer="onceonly-dev", audience="onceonly")
    log_engine = make_engine(f"sqlite:///{tmp_path / 'portal-log.sqlite'}")
    upgrade(log_engine)
    log = TransparencyLog(log_engine, log_id="n", signer=NoteSigner.generate("onceonly.test/n"))

    async def scenario() -> None:
        async with (
            fed.client() as one_stop,
            desk_for(desk, fed.service(one_stop), issuer) as procedures,
        ):
            portal = build_portal(
                Settings(portal_secret=SecretStr("x" * 32), data_dir=tmp_path),
                consent=LocalConsent(fed.consents),
                logs=local_logs({"n": log}, lambda p: {p.subject}),
                issuer=issuer,
                verifier=issuer.verifier(),
                demo_citizens=[(citizen, "市民"), (other, "別の市民")],
                procedures=procedures,
            )
            app = Starlette(routes=[Mount("/portal", app=portal)])
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=BASE
            ) as http:

                async def csrf_of(path: str) -> tuple[str, str]:
                    r = await http.get("/portal" + path)
                    found = _CSRF.search(r.text)
                    assert found, r.text
                    return found.group(1), r.text

                token, _ = await csrf_of("/signin")
                await http.post("/portal/signin", data={"csrf": token, "who": citizen})
                token, page = await csrf_of("/procedures")
                assert "住所変更を始める" in page
                bad = await http.post(
                    "/portal/procedures",
                    data={"csrf": token, "move_date": "soon", "address": NEW_ADDRESS},
                )
                assert bad.status_code == 400
                assert 'role="alert"' in bad.text
                start = await http.post(
                    "/portal/procedures",
                    data={
                        "csrf": token,
                        "move_date": utc_now().date().isoformat(),
                        "address": NEW_ADDRESS,
                        "submission": "s-1",
                    },
                )
                assert start.status_code == 303, start.text
                status_path = start.headers["location"].removeprefix("/portal")
                token, preview = await csrf_of(status_path)
                assert 'data-status="previewed"' in preview
                assert 'id="recipient-electricity"' in preview
                assert 'name="consent:gas"' in preview
                assert NEW_ADDRESS in preview
                confirm = await http.post(
                    "/portal" + status_path + "/confirm",
                    data={
                        "csrf": token,
                        "consent:electricity": "approve",
                        "consent:gas": "decline",
                    },
                )
                assert confirm.status_code == 303
                _, running = await csrf_of(status_path)
                assert 'data-status="running"' in running
                assert '<meta http-equiv="refresh"' in running

                runner = fed.runner(one_stop)
                for _ in range(20):
                    if await runner.run_once() == 0:
                        break
                _, done = await csrf_of(status_path)
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url=BASE
                ) as intruder:
                    page = await intruder.get("/portal/signin")
                    found = _CSRF.search(page.text)
                    assert found
                    await intruder.post(
                        "/portal/signin", data={"csrf": found.group(1), "who": other}
                    )
                    assert (await intruder.get("/portal" + status_path)).status_code == 404
                assert 'data-status="done"' in done  # a declined company is skipped, not failed
                assert '<meta http-equiv="refresh"' not in done
                assert 'id="step-resident-registry" data-state="done"' in done
                assert 'id="step-electricity" data-state="done"' in done
                assert 'id="step-gas" data-state="skipped"' in done

    asyncio.run(scenario())
    log_engine.dispose()
