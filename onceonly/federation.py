"""The reference federation of Machida city, set up and run locally (``demo`` and ``serve``).

``provision`` builds a complete instance in a data directory: the CA and central keys, a key and
certificate for every reference subsystem, the central registry (members, subsystems, services as
the shipped declaration ``adapters/reference/machida.toml`` gives them, with their OpenAPI, access
rights and statutory bases), the nodes' registries file (a copy of that declaration), API keys for the departmental
systems, and seeded synthetic registries. ``LocalFederation`` then serves the central server and
one node per member on **one** loopback port, each app mounted under its own prefix
(``/central``, ``/nodes/<member>``); node-to-node traffic still goes over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import inspect, text
from starlette.routing import Mount

from adapters.aliases import AgencyAliases
from adapters.factory import register_services
from adapters.reference.registries import REFERENCE_FILE, reference_config, reference_registries
from adapters.reference.rights import ONE_STOP, REFERENCE_RIGHTS
from adapters.seed import seed
from adapters.translator import TRANSLATOR_LOG
from exchange.db import make_engine, upgrade
from exchange.errors import ConfigurationError, OnceOnlyError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.app import create_node_app, database_url
from exchange.ports import CITIZEN_AGENCY
from exchange.provisioning import (
    init_instance,
    issue_api_key,
    provision_sealing_key,
    provision_subsystem,
    provision_translator_key,
)
from exchange.registry_admin import RegistryAdmin
from exchange.settings import Settings
from exchange.signing import MemberSigner, load_private_key
from exchange.tokens import DEV_ISSUER_KEY, DevIssuer, Principal
from exchange.web.health import database_check, operations_router
from exchange.web.metrics import ComponentMetrics
from exchange.web.openapi import install_openapi
from exchange.web.problems import install_problem_handlers
from exchange.web.redirects import RelativeRedirects
from onceonly.wiring import (
    COMPONENT_BRANCHES,
    PSEUDONYMS,
    audit_log,
    build_node_parts,
    central_app,
    consent_issuer_key,
    consent_log,
    consent_service,
    provision_audit_key,
    provision_consent_keys,
    pseudonym_agencies,
    pseudonym_service,
    registries_file,
    registry_database_url,
    subjects_of,
    token_verifier,
)

__all__ = [
    "LocalFederation",
    "demo_settings",
    "member_prefix",
    "one_stop_app",
    "portal_app",
    "provision",
]

INSTANCE = "JP"
RESIDENTS_AGENCY = "JP/GOV/132098/resident-registry"


def member_prefix(member: MemberId) -> str:
    return f"/nodes/{str(member).replace('/', '_')}"


def _members() -> dict[MemberId, tuple[str, str]]:
    return {
        MemberId.parse(m): (decl.name_ja, decl.name_en)
        for m, decl in reference_config().members.items()
    }


def _subsystems() -> list[tuple[ClientId, str]]:
    subs = [(r.client, r.name_ja) for r in reference_registries()]
    subs.append((ONE_STOP, "ワンストップ窓口"))
    return subs


@dataclass
class Provisioned:
    settings: Settings
    base_url: str
    api_keys: dict[str, str] = field(default_factory=dict)
    citizens: int = 0


def provision(
    settings: Settings,
    base_url: str,
    *,
    citizens: int = 200,
    seed_value: int = 20261123,
    progress: Callable[[str], None] = lambda _msg: None,
    addresses: Mapping[MemberId, str] | None = None,
    central_url: str | None = None,
) -> Provisioned:
    """Set up the whole reference instance in ``settings.data_dir`` (idempotent).

    Node addresses default to ``base_url`` + ``/nodes/<member>`` (one port, ``LocalFederation``);
    ``addresses`` gives each member's node its own base URL instead (one process per node)."""
    now = datetime.now(UTC)
    keys = KeyStore(settings.data_dir)
    progress("keys: instance CA, central signing key, consent, translator and audit log keys")
    init_instance(keys, INSTANCE, now=now)
    provision_consent_keys(settings)
    provision_audit_key(settings, TRANSLATOR_LOG)
    for member in _members():
        provision_audit_key(settings, str(member))
    central_engine = make_engine(database_url(settings, "central"))
    upgrade(central_engine, COMPONENT_BRANCHES["central"])
    admin = RegistryAdmin(central_engine)
    progress("central registry: members, subsystems, certificates")
    for member, (name_ja, name_en) in _members().items():
        address = (addresses or {}).get(member) or base_url + member_prefix(member)
        admin.add_member(member, name_ja, name_en=name_en, address=address)
    for client, name in _subsystems():
        admin.add_subsystem(client, name=name)
        admin.add_certificate(client, provision_subsystem(keys, client, now=now))
        admin.set_seal_key(client, provision_sealing_key(keys, client))
    progress("central registry: services, access rights, statutes")
    register_services(admin, reference_config())
    nodes_file = registries_file(settings)
    if not nodes_file.exists():  # the nodes serve the registries the reference declares
        nodes_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REFERENCE_FILE, nodes_file)
    for i, right in enumerate(REFERENCE_RIGHTS):
        client, service = ClientId.parse(right.client), ServiceId.parse(right.service)
        admin.grant(client, service)
        if right.statute:
            fields = right.fields
            if fields is None:
                doc = admin.document(instance=INSTANCE, ca_pem="", central_url="", now=now)
                fields = next(s.fields for s in doc.services if s.id == right.service)
            admin.add_statute(
                f"statute-{i:03d}",
                service=service,
                client=client,
                purposes=right.purposes,
                fields=fields,
                ordinance=right.statute,
                title_ja=right.title_ja,
                title_en=right.title_en,
            )
    progress("consent service (information bank), pseudonym translator, development token issuer")
    admin.set_consent_service(
        central_url or base_url + "/central", consent_issuer_key(settings).public_key_pem()
    )
    admin.set_translator(central_url or base_url + "/central", provision_translator_key(keys))
    DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    central_engine.dispose()
    out = Provisioned(settings, base_url)
    progress("API keys for the departmental systems")
    for member in {c.member for c, _ in _subsystems()}:
        engine = make_engine(database_url(settings, f"node-{str(member).replace('/', '_')}"))
        upgrade(engine, COMPONENT_BRANCHES["node"])
        for client, _ in _subsystems():
            if client.member == member:
                out.api_keys[str(client)] = issue_api_key(
                    engine, node=str(member), client=client, now=now
                )
        engine.dispose()
    marker = settings.data_dir / "seeded.json"
    if not marker.exists() and citizens > 0:
        progress(f"seeding {citizens} synthetic citizens into the registries")
        urls = {
            r.subsystem: registry_database_url(settings, r.subsystem)
            for r in reference_registries()
        }
        urls[PSEUDONYMS] = registry_database_url(settings, PSEUDONYMS)
        store = make_engine(urls[PSEUDONYMS])
        pseudonym_service(settings, store)  # migrates the pseudonym store before seeding into it
        store.dispose()
        report = seed(citizens, seed_value, urls)
        marker.write_text(json.dumps({"citizens": report.citizens, "seed": seed_value}))
    out.citizens = citizens
    return out


def free_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket; a port in use (or an address not ours) is a ``ConfigurationError``.

    Made with ``IPPROTO_TCP`` named: asyncio's loop (``serve``, ``demo``) sets ``TCP_NODELAY`` only
    on sockets whose protocol says TCP, and without it every answer on a kept-alive connection
    waited for the client's delayed ACK (about 40 ms)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def demo_settings(settings: Settings) -> Settings:
    """The settings of the demo (``onceonly demo``/``serve``): it trusts the development issuer,
    and only it — the one place besides ``ONCEONLY_ALLOW_DEV_ISSUER`` that enables it."""
    return settings.model_copy(
        update={"allow_dev_issuer": True, "oidc_issuer": None, "jwt_public_key_file": None}
    )


class LocalFederation:
    """The central server and every member's node, mounted on one loopback port."""

    def __init__(
        self, settings: Settings, sock: socket.socket, extra_mounts: Iterable[Mount] = ()
    ) -> None:
        self.settings = demo_settings(settings)
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        self._extra = list(extra_mounts)
        self._server: uvicorn.Server | None = None
        self._nodes: dict[MemberId, FastAPI] = {}

    def build_app(self) -> FastAPI:
        settings = self.settings.model_copy(update={"central_url": self.base_url + "/central"})
        central = central_app(settings)
        # Nodes fetch the registry from the central server on this same port, which accepts
        # connections only once every lifespan has started: they fetch after start (``serve``).
        nodes: dict[MemberId, FastAPI] = {
            m: create_node_app(settings, m, build_node_parts(settings, m), registry_wait_s=None)
            for m in _members()
        }
        apps: list[FastAPI] = [central, *nodes.values()]
        apps += [m.app for m in self._extra if isinstance(m.app, FastAPI)]

        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            async with contextlib.AsyncExitStack() as stack:
                for sub in apps:
                    await stack.enter_async_context(sub.router.lifespan_context(sub))
                yield

        # The root only lists what runs here (``GET /``): each mounted API serves its own
        # OpenAPI document (``/central/openapi.json``, ``/nodes/<member>/openapi.json``, …).
        root = FastAPI(
            title="onceonly local federation",
            lifespan=lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        # What no mounted app answers (a path outside every mount) is a problem+json 404 too.
        install_problem_handlers(root)
        self._nodes = nodes
        root.state.nodes = nodes
        root.state.central = central
        root.add_middleware(RelativeRedirects)  # a forged Host never comes back in a Location
        root.router.routes.append(Mount("/central", app=central))
        for m, app in nodes.items():
            root.router.routes.append(Mount(member_prefix(m), app=app))
        for mount in self._extra:
            root.router.routes.append(mount)
        root.add_api_route(
            "/",
            _index_route([m.path for m in self._extra]),
            methods=["GET"],
            include_in_schema=False,
        )
        return root

    async def serve(
        self, started: asyncio.Event | None = None, *, log_level: str = "warning"
    ) -> None:
        # Central first: nodes fetch the registry from it while they start, over this same port.
        config = uvicorn.Config(
            self.build_app(), log_level=log_level, access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        task = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.05)
        for app in self._nodes.values():
            await app.state.registry.refresh(now=datetime.now(UTC))
        if started is not None:
            started.set()
        await task

    @property
    def nodes(self) -> dict[MemberId, FastAPI]:
        return dict(self._nodes)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


_EXTRA_TITLES = {
    "/portal": ("ポータル（市民・監査人）", "Portal (citizens and auditors)"),
    "/one-stop": ("ワンストップ窓口 API", "One-stop desk API"),
}


def _index_route(extra_paths: Iterable[str]) -> Callable[[Request], Response]:
    """``GET /`` of the local federation: what runs here, with links, leading to the portal.

    JSON for a caller that asks for it (``Accept: application/json``), else a small ja/en page.
    Links are paths only: a forged Host header never reaches them."""
    parts: list[dict[str, str]] = [
        {
            "path": p + "/",
            "ja": _EXTRA_TITLES.get(p, (p, p))[0],
            "en": _EXTRA_TITLES.get(p, (p, p))[1],
        }
        for p in sorted(extra_paths, key=lambda p: p != "/portal")  # the portal leads
    ]
    parts.append(
        {
            "path": "/central/registry",
            "ja": "中央サーバ（署名済みレジストリ）",
            "en": "Central server (signed registry)",
        }
    )
    parts += [
        {
            "path": member_prefix(m) + "/listClients",
            "ja": f"{ja} のノード（{m}）",
            "en": f"{en} node ({m})",
        }
        for m, (ja, en) in _members().items()
    ]
    items = "".join(
        f'<li><a href="{html.escape(x["path"])}">{html.escape(x["ja"])}</a>'
        f' / <span lang="en">{html.escape(x["en"])}</span></li>'
        for x in parts
    )
    page = (
        '<!doctype html><html lang="ja"><meta charset="utf-8">'
        "<title>onceonly</title><h1>onceonly</h1>"
        '<p>ここで動いているもの / <span lang="en">What runs here</span></p>'
        f"<ul>{items}</ul></html>"
    )

    def index(request: Request) -> Response:
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"components": parts})
        return HTMLResponse(page)

    return index


def one_stop_app(settings: Settings, node_url: str, api_key: str) -> FastAPI:
    """Machida's one-stop desk: the citizens' procedures API and the durable step runner.

    It calls the one-stop subsystem's own node (``node_url``) like any departmental system; the
    runner resumes pending steps after a restart (they are rows in the database)."""
    from procedures.address_change import AddressChangeService
    from procedures.api import build_router
    from procedures.consent_desk import LocalConsentDesk
    from procedures.one_stop import OneStopClient
    from procedures.runner import ProcedureRunner

    engine = make_engine(database_url(settings, "procedures"))
    upgrade(engine, COMPONENT_BRANCHES["procedures"])
    keys = KeyStore(settings.data_dir)
    signer = MemberSigner(load_private_key(keys.subsystem_key(ONE_STOP)))
    client = OneStopClient(node_url, api_key)
    consents = consent_service(settings)
    service = AddressChangeService(engine, client, LocalConsentDesk(consents))
    runner = ProcedureRunner(engine, client, signer)
    stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with client:
            task = asyncio.create_task(runner.run_forever(stop))
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(task, return_exceptions=True)
                engine.dispose()

    app = FastAPI(title="onceonly one-stop desk", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_openapi(app)
    metrics = ComponentMetrics([runner.metrics])
    install_problem_handlers(
        app, on_database_unavailable=lambda: metrics.database_unavailable_at("request")
    )
    app.add_middleware(RelativeRedirects)
    app.include_router(operations_router(metrics, {"database": database_check(engine)}))
    app.include_router(
        build_router(
            service, token_verifier(demo_settings(settings)), clock=lambda: datetime.now(UTC)
        )
    )
    app.state.procedures = service
    app.state.consents = consents
    return app


def portal_app(settings: Settings, desk: FastAPI | None, *, citizens: int = 5) -> FastAPI:
    """The citizens' and auditors' portal over the local federation's services and logs, in
    this process (``onceonly portal`` runs it apart, over HTTP: ``portal.remote``)."""
    from alerts.inbox import AlertInbox
    from portal import build_portal
    from portal.local import LocalAlerts, LocalConsent, LocalDesk, LocalLog, local_logs

    logs = {}
    inboxes = {}
    for member in _members():
        engine = make_engine(database_url(settings, f"node-{str(member).replace('/', '_')}"))
        upgrade(engine, COMPONENT_BRANCHES["node"])
        logs[str(member)] = audit_log(settings, engine, str(member))
        inboxes[str(member)] = AlertInbox(engine, str(member))
    pseudonyms = pseudonym_service(settings)
    residents = make_engine(registry_database_url(settings, "resident-registry"))
    demo: list[tuple[str, str]] = []
    rows: list[tuple[object, object]] = []
    with residents.connect() as conn:
        if inspect(conn).has_table("residents"):  # an instance served without synthetic citizens
            found = conn.execute(
                text("SELECT resident_id, name FROM residents ORDER BY resident_id LIMIT :n"),
                {"n": citizens},
            )
            rows = [(r[0], r[1]) for r in found]
    residents.dispose()
    for resident_id, name in rows:
        with contextlib.suppress(OnceOnlyError):
            citizen = pseudonyms.translate(
                str(resident_id), from_agency=RESIDENTS_AGENCY, to_agency=CITIZEN_AGENCY
            )
            demo.append((citizen, str(name)))
    issuer = DevIssuer.load(
        settings.data_dir / DEV_ISSUER_KEY,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    subjects = AgencyAliases(pseudonyms, {})
    consents = consent_log(settings)
    return build_portal(
        settings,
        consent=LocalConsent(
            desk.state.consents if desk is not None else consent_service(settings, audit=consents)
        ),
        # The consent service's own log: the citizen's consent history, each entry with its proof.
        consent_log=LocalLog(consents.log, lambda principal: {principal.subject}),
        logs=local_logs(logs, _with_own_id(subjects_of(subjects, pseudonym_agencies(settings)))),
        alerts={
            m: LocalAlerts(
                inboxes[m], logs[m].origin, subjects_of(subjects, pseudonym_agencies(settings))
            )
            for m in logs
        },
        issuer=issuer,
        verifier=issuer.verifier(),
        demo_citizens=demo,
        procedures=LocalDesk(desk.state.procedures) if desk is not None else None,
        # The local federation speaks plain HTTP on loopback (Chromium keeps Secure cookies
        # for http://127.0.0.1 too, other browsers may not): Secure stays on.
    )


def _with_own_id(
    lookup: Callable[[Principal], Collection[str]],
) -> Callable[[Principal], Collection[str]]:
    """Consent changes are logged under the citizen's own id: show those entries too."""

    def both(principal: Principal) -> Collection[str]:
        return {*lookup(principal), principal.subject}

    return both
