"""The ``onceonly`` command line (typer + rich).

``demo`` and ``serve`` run the reference federation locally on SQLite; ``central``, ``node`` and
``portal`` run one component each for real deployments; ``keys``, ``registry`` and ``db`` manage
an instance. Settings come from ``ONCEONLY_*`` environment variables
(``exchange.settings.Settings``; the portal's own ``ONCEONLY_PORTAL_*``, ``portal.settings``);
options here override the data directory and the database. Nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from exchange.db import make_engine, upgrade
from exchange.errors import OnceOnlyError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.app import database_url
from exchange.provisioning import (
    init_instance,
    install_certificate,
    issue_api_key,
    join_instance,
    provision_sealing_key,
    provision_subsystem,
    provision_translator_key,
    request_subsystem,
    revoke_api_keys,
    sign_request,
)
from exchange.registry_admin import RegistryAdmin
from exchange.sealing import SealingPublicKey
from exchange.settings import Settings
from onceonly.wiring import COMPONENT_BRANCHES

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="onceonly: once-only data exchange for municipalities",
)
keys_app = typer.Typer(no_args_is_help=True, help="Keys and certificates (into the data directory)")
registry_app = typer.Typer(no_args_is_help=True, help="Manage the central registry")
db_app = typer.Typer(no_args_is_help=True, help="Database migrations")
audit_app = typer.Typer(
    no_args_is_help=True, help="The transparency log: keys, offline verification"
)
app.add_typer(keys_app, name="keys")
app.add_typer(registry_app, name="registry")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="defaults to ONCEONLY_DATA_DIR or ./.onceonly")
]


def _settings(data_dir: Path | None = None, **overrides: object) -> Settings:
    settings = Settings()
    update: dict[str, object] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        update["data_dir"] = data_dir
    return settings.model_copy(update=update) if update else settings


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(exc: OnceOnlyError) -> None:
    err.print(f"[red]error[/red] ({exc.code}): {exc.detail}")
    raise typer.Exit(2)


def _admin(settings: Settings) -> RegistryAdmin:
    engine = make_engine(database_url(settings, "central"))
    upgrade(engine, COMPONENT_BRANCHES["central"])
    return RegistryAdmin(engine)


def _split(values: str) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()]


# --- keys ----------------------------------------------------------------------------------------


@keys_app.command("init")
def keys_init(
    instance: Annotated[str, typer.Option(help="instance id, e.g. JP")] = "JP",
    data_dir: DataDir = None,
) -> None:
    """Create the instance CA, the central signing key and the trust anchor (idempotent)."""
    settings = _settings(data_dir)
    try:
        created = init_instance(KeyStore(settings.data_dir), instance, now=_now())
    except OnceOnlyError as exc:
        _fail(exc)
        return
    what = "created" if created else "already present"
    console.print(f"instance [bold]{instance}[/bold] keys {what} in {settings.data_dir}")
    console.print(f"trust anchor for nodes: {KeyStore(settings.data_dir).anchor}")


@keys_app.command("member")
def keys_member(subsystem: str, data_dir: DataDir = None) -> None:
    """Make a subsystem's signing key, its CA-issued certificate and its sealing key pair (each
    only once); print the certificate path and the sealing public key's file."""
    settings = _settings(data_dir)
    keys = KeyStore(settings.data_dir)
    try:
        client = ClientId.parse(subsystem)
        provision_subsystem(keys, client, now=_now())
        provision_sealing_key(keys, client)  # writes the public half beside the key
    except OnceOnlyError as exc:
        _fail(exc)
        return
    console.print(str(keys.subsystem_cert(client)))
    console.print(str(keys.subsystem_seal_public(client)))


@keys_app.command("join")
def keys_join(
    anchor: Annotated[
        Path, typer.Option(help="the central server's public key (anchor.pem), got out of band")
    ],
    instance: Annotated[str, typer.Option(help="instance id, e.g. JP")] = "JP",
    data_dir: DataDir = None,
) -> None:
    """An organisation's data directory pins the instance and the central server's key."""
    settings = _settings(data_dir)
    try:
        created = join_instance(KeyStore(settings.data_dir), instance, anchor.read_text())
    except OnceOnlyError as exc:
        _fail(exc)
        return
    what = "pinned" if created else "already pinned"
    console.print(
        f"instance [bold]{instance}[/bold] and its trust anchor {what} in {settings.data_dir}"
    )


@keys_app.command("request")
def keys_request(subsystem: str, data_dir: DataDir = None) -> None:
    """Make a subsystem's signing and sealing keys here and a certificate request for the central
    operator; print the request's path and the sealing public key's file (both go to the central
    operator; the private keys stay in this data directory)."""
    settings = _settings(data_dir)
    keys = KeyStore(settings.data_dir)
    try:
        client = ClientId.parse(subsystem)
        path = request_subsystem(keys, client)
    except OnceOnlyError as exc:
        _fail(exc)
        return
    console.print(str(path), soft_wrap=True)
    console.print(str(keys.subsystem_seal_public(client)), soft_wrap=True)


@keys_app.command("sign-request")
def keys_sign_request(
    request: Annotated[Path, typer.Argument(help="the organisation's certificate request (.csr)")],
    out: Annotated[Path, typer.Option(help="where to write the issued certificate (PEM)")],
    data_dir: DataDir = None,
) -> None:
    """Central operator: check a certificate request and issue its certificate with the CA."""
    settings = _settings(data_dir)
    try:
        subsystem, pem = sign_request(KeyStore(settings.data_dir), request.read_text(), now=_now())
    except OnceOnlyError as exc:
        _fail(exc)
        return
    out.write_text(pem)
    console.print(f"certificate for {subsystem} written to {out}", soft_wrap=True)


@keys_app.command("install-cert")
def keys_install_cert(
    cert: Annotated[Path, typer.Argument(help="the certificate the central operator issued")],
    data_dir: DataDir = None,
) -> None:
    """Put an issued certificate beside the subsystem key it certifies."""
    settings = _settings(data_dir)
    try:
        subsystem = install_certificate(KeyStore(settings.data_dir), cert.read_text())
    except OnceOnlyError as exc:
        _fail(exc)
        return
    console.print(f"certificate installed for {subsystem}", soft_wrap=True)


def _client_node_engine(settings: Settings, client: str) -> tuple[ClientId, Engine]:
    """CLIENT parsed, and its member's node database (migrated)."""
    cid = ClientId.parse(client)
    engine = make_engine(database_url(settings, f"node-{str(cid.member).replace('/', '_')}"))
    upgrade(engine, COMPONENT_BRANCHES["node"])
    return cid, engine


@keys_app.command("api-key")
def keys_api_key(client: str, data_dir: DataDir = None) -> None:
    """Issue an API key for a departmental system calling its node as CLIENT (shown once)."""
    try:
        cid, engine = _client_node_engine(_settings(data_dir), client)
        console.print(issue_api_key(engine, node=str(cid.member), client=cid, now=_now()))
    except OnceOnlyError as exc:
        _fail(exc)


@keys_app.command("revoke-api-key")
def keys_revoke_api_key(client: str, data_dir: DataDir = None) -> None:
    """Revoke every API key of CLIENT at its node (a running node stops accepting them within 5 s)."""
    try:
        cid, engine = _client_node_engine(_settings(data_dir), client)
        count = revoke_api_keys(engine, node=str(cid.member), client=cid)
        console.print(f"revoked {count} API key(s) of {cid}")
    except OnceOnlyError as exc:
        _fail(exc)


# --- registry ------------------------------------------------------------------------------------


@registry_app.command("add-member")
def registry_add_member(
    member: str,
    name: Annotated[str, typer.Option()],
    name_en: Annotated[str, typer.Option()] = "",
    address: Annotated[str | None, typer.Option(help="base URL of the member's node")] = None,
    data_dir: DataDir = None,
) -> None:
    try:
        _admin(_settings(data_dir)).add_member(
            MemberId.parse(member), name, name_en=name_en, address=address
        )
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("add-subsystem")
def registry_add_subsystem(
    subsystem: str,
    name: Annotated[str, typer.Option()] = "",
    cert: Annotated[
        Path | None, typer.Option(help="PEM certificate issued by `keys member`")
    ] = None,
    seal_key: Annotated[
        Path | None, typer.Option(help="sealing public key file written by `keys member` (.pub)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    try:
        admin = _admin(_settings(data_dir))
        client = ClientId.parse(subsystem)
        admin.add_subsystem(client, name=name)
        if cert is not None:
            admin.add_certificate(client, cert.read_text())
        if seal_key is not None:
            admin.set_seal_key(client, SealingPublicKey.parse(seal_key.read_text().strip()))
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("set-translator")
def registry_set_translator(
    url: Annotated[str, typer.Option(help="base URL of the central server serving it")],
    data_dir: DataDir = None,
) -> None:
    """Name the pseudonym translator (its token key is made in the data directory, once)."""
    settings = _settings(data_dir)
    try:
        _admin(settings).set_translator(url, provision_translator_key(KeyStore(settings.data_dir)))
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("add-service")
def registry_add_service(
    service: str,
    fields: Annotated[str, typer.Option(help="comma-separated data fields")],
    purposes: Annotated[str, typer.Option(help="comma-separated purposes")],
    description: Annotated[str, typer.Option()] = "",
    changes: Annotated[bool, typer.Option(help="the service changes the registry")] = False,
    data_dir: DataDir = None,
) -> None:
    try:
        _admin(_settings(data_dir)).add_service(
            ServiceId.parse(service),
            description=description,
            fields=_split(fields),
            purposes=_split(purposes),
            changes=changes,
        )
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("add-services")
def registry_add_services(
    from_file: Annotated[
        Path, typer.Option("--from", help="a registries file (TOML, docs/adapters.md)")
    ],
    data_dir: DataDir = None,
) -> None:
    """Register every service a registries file declares, with its OpenAPI document."""
    from adapters.config import load_registries
    from adapters.factory import register_services

    try:
        for sid in register_services(_admin(_settings(data_dir)), load_registries(from_file)):
            console.print(str(sid))
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("grant")
def registry_grant(client: str, service: str, data_dir: DataDir = None) -> None:
    """Let CLIENT call SERVICE (access right)."""
    try:
        _admin(_settings(data_dir)).grant(ClientId.parse(client), ServiceId.parse(service))
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("revoke-right")
def registry_revoke_right(client: str, service: str, data_dir: DataDir = None) -> None:
    try:
        _admin(_settings(data_dir)).revoke_right(ClientId.parse(client), ServiceId.parse(service))
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("revoke-cert")
def registry_revoke_cert(fingerprint_or_serial: str, data_dir: DataDir = None) -> None:
    try:
        _admin(_settings(data_dir)).revoke_certificate(fingerprint_or_serial)
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("add-statute")
def registry_add_statute(
    statute_id: str,
    service: Annotated[str, typer.Option()],
    client: Annotated[str, typer.Option()],
    purposes: Annotated[str, typer.Option()],
    fields: Annotated[str, typer.Option()],
    ordinance: Annotated[str, typer.Option()],
    title_ja: Annotated[str, typer.Option()] = "",
    title_en: Annotated[str, typer.Option()] = "",
    data_dir: DataDir = None,
) -> None:
    """A statutory basis: CLIENT may get FIELDS of SERVICE for PURPOSES without consent."""
    try:
        _admin(_settings(data_dir)).add_statute(
            statute_id,
            service=ServiceId.parse(service),
            client=ClientId.parse(client),
            purposes=_split(purposes),
            fields=_split(fields),
            ordinance=ordinance,
            title_ja=title_ja,
            title_en=title_en,
        )
    except OnceOnlyError as exc:
        _fail(exc)


@registry_app.command("show")
def registry_show(
    as_json: Annotated[bool, typer.Option("--json")] = False, data_dir: DataDir = None
) -> None:
    settings = _settings(data_dir)
    keys = KeyStore(settings.data_dir)
    try:
        doc = _admin(settings).document(
            instance=keys.instance(), ca_pem="", central_url=settings.central_url, now=_now()
        )
    except OnceOnlyError as exc:
        _fail(exc)
        return
    if as_json:
        console.print_json(json.dumps(doc.model_dump(mode="json", exclude={"ca_certificate"})))
        return
    table = Table(title=f"registry {doc.instance}, serial {doc.serial}")
    for col in ("service", "fields", "purposes", "clients"):
        table.add_column(col)
    for s in doc.services:
        clients = [r.client for r in doc.access_rights if r.service == s.id]
        table.add_row(s.id, ", ".join(s.fields), ", ".join(s.purposes), "\n".join(clients))
    console.print(table)


# --- db ------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    component: Annotated[
        str,
        typer.Option(
            help="central, node-<INSTANCE_CLASS_CODE>, consent, consent-audit or procedures"
        ),
    ] = "central",
    data_dir: DataDir = None,
) -> None:
    """Apply a component's own migrations to its database (each component has its own tables)."""
    settings = _settings(data_dir)
    kind = "node" if component.startswith("node-") else component
    if kind not in COMPONENT_BRANCHES:
        err.print(f"[red]error[/red]: no component named {component!r}")
        raise typer.Exit(2)
    upgrade(make_engine(database_url(settings, component)), COMPONENT_BRANCHES[kind])
    console.print(f"{component}: up to date")


# --- audit ---------------------------------------------------------------------------------------


@audit_app.command("key")
def audit_key(
    log_id: Annotated[str, typer.Argument(help="a member id, or consent-service")],
    data_dir: DataDir = None,
) -> None:
    """Print a log's public note key (vkey), to hand to auditors out of band."""
    from onceonly.wiring import audit_log

    settings = _settings(data_dir)
    engine = make_engine("sqlite://")
    console.print(audit_log(settings, engine, log_id).vkey(), soft_wrap=True)


@audit_app.command("verify")
def audit_verify(
    key: Annotated[
        str, typer.Option(help="the log's vkey (from `onceonly audit key`), obtained out of band")
    ],
    checkpoint: Annotated[Path | None, typer.Option(help="a signed checkpoint file")] = None,
    export: Annotated[Path | None, typer.Option(help="the log exported as JSON Lines")] = None,
    node: Annotated[
        str | None, typer.Option(help="fetch checkpoint and export from this node URL")
    ] = None,
    token: Annotated[str | None, typer.Option(help="auditor bearer token for --node")] = None,
    earlier: Annotated[
        Path | None, typer.Option(help="a checkpoint saved before: must be consistent")
    ] = None,
    save: Annotated[Path | None, typer.Option(help="save the verified checkpoint here")] = None,
) -> None:
    """Verify a log offline: every checkpoint signature, the root over every entry, consistency
    with an earlier checkpoint; name the first bad entry. Exit 0 only when all holds."""
    import httpx

    from audit.verify import verify_export

    if node:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(timeout=120) as client:
            cp = client.get(f"{node.rstrip('/')}/audit/checkpoint", headers=headers)
            cp.raise_for_status()
            checkpoint_text = cp.text
            ex = client.get(f"{node.rstrip('/')}/audit/export", headers=headers)
            ex.raise_for_status()
            lines = ex.text.splitlines()
    elif checkpoint and export:
        checkpoint_text = checkpoint.read_text()
        lines = export.read_text().splitlines()
    else:
        err.print("give --checkpoint and --export, or --node")
        raise typer.Exit(2)
    report = verify_export(
        checkpoint_text, lines, key, earlier_checkpoint=earlier.read_text() if earlier else None
    )
    if report:
        console.print(
            f"[green]verified[/green]: {report.entries} entries, checkpoint size "
            f"{report.checkpoint.size if report.checkpoint else '?'}"
        )
        if save:
            save.write_text(checkpoint_text)
        return
    where = (
        f" — first bad entry: {report.first_bad_index}"
        if report.first_bad_index is not None
        else ""
    )
    err.print(f"[red]NOT verified[/red]{where}")
    for reason in report.reasons:
        err.print(f"  - {reason}")
    raise typer.Exit(1)


# --- components ----------------------------------------------------------------------------------


@app.command()
def central(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8100,
    data_dir: DataDir = None,
) -> None:
    """Run the central server (serves the signed registry)."""
    from onceonly.wiring import central_app

    settings = _settings(data_dir)
    application = central_app(settings)
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def node(
    member: Annotated[str, typer.Option(help="the member this node serves, e.g. JP/GOV/132098")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8101,
    registries: Annotated[
        Path | None,
        typer.Option(
            help="the registries this node serves (TOML; default data_dir/registries.toml)"
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="worker processes sharing the socket, the keys and the database (use "
            "PostgreSQL for more than one)",
        ),
    ] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run one member's node (security server)."""
    from exchange.node.app import create_node_app
    from onceonly.asgi import NODE_MEMBER_ENV
    from onceonly.wiring import build_node_parts

    settings = _settings(data_dir, registries_file=registries)
    mid = MemberId.parse(member)
    if workers == 1:
        application = create_node_app(settings, mid, build_node_parts(settings, mid))
        uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)
        return
    # Each worker builds its own app from the environment (onceonly.asgi.node_app).
    os.environ[NODE_MEMBER_ENV] = str(mid)
    os.environ["ONCEONLY_DATA_DIR"] = str(settings.data_dir.resolve())
    if settings.registries_file is not None:
        os.environ["ONCEONLY_REGISTRIES_FILE"] = str(settings.registries_file.resolve())
    uvicorn.run(
        "onceonly.asgi:node_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def portal(
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="ONCEONLY_PORTAL_CONFIG",
            help="TOML settings (consent_url, nodes, desk_url, ...); ONCEONLY_PORTAL_* wins",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run the citizens' and auditors' portal on its own: it calls the consent service, the
    nodes and the one-stop desk over HTTP and opens no database (docs/portal.md)."""
    from portal.remote import create_portal_app
    from portal.settings import load_portal_settings

    try:
        settings = load_portal_settings(config, host=host, port=port)
        application, close = create_portal_app(settings)
    except OnceOnlyError as exc:
        _fail(exc)
        return
    try:
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
        )
    finally:
        close()


@app.command()
def desk(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run the one-stop desk on its own: procedures database only, everything else over HTTP
    (settings ONCEONLY_DESK_*, docs/operator.md)."""
    from onceonly.desk import run_desk

    try:
        run_desk(host=host, port=port)
    except OnceOnlyError as exc:
        _fail(exc)


@app.command()
def runner(
    host: Annotated[str | None, typer.Option(help="address to listen on (health, metrics)")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run a procedure runner; several may share one PostgreSQL database (settings
    ONCEONLY_RUNNER_*, docs/operator.md)."""
    from onceonly.desk import run_runner

    try:
        run_runner(host=host, port=port)
    except OnceOnlyError as exc:
        _fail(exc)


@app.command()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="keep the demo's data here (default: a fresh temporary directory)"),
    ] = None,
    citizens: Annotated[int, typer.Option(help="synthetic citizens to seed")] = 200,
) -> None:
    """A scripted tour: start a local federation, make signed exchanges, show the results, stop."""
    from onceonly.demo import run_demo

    raise typer.Exit(asyncio.run(run_demo(console, data_dir=data_dir, citizens=citizens)))


@app.command()
def serve(
    port: Annotated[int, typer.Option()] = 8000,
    citizens: Annotated[int, typer.Option()] = 1000,
    data_dir: DataDir = None,
) -> None:
    """Run the reference federation on one port and leave it running (Ctrl-C stops it)."""
    from onceonly.demo import run_serve

    asyncio.run(run_serve(console, _settings(data_dir), port=port, citizens=citizens))


@app.command()
def seed(
    citizens: Annotated[int, typer.Option(help="synthetic citizens to generate")] = 1000,
    seed_value: Annotated[int, typer.Option("--seed", help="same seed, same data")] = 20261123,
    data_dir: DataDir = None,
) -> None:
    """Fill the reference registries with realistic synthetic citizens of Machida (no real persons)."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from adapters.reference.registries import reference_registries
    from adapters.seed import seed as run_seed
    from onceonly.wiring import PSEUDONYMS, pseudonym_service, registry_database_url

    settings = _settings(data_dir)
    urls = {
        r.subsystem: registry_database_url(settings, r.subsystem) for r in reference_registries()
    }
    urls[PSEUDONYMS] = registry_database_url(settings, PSEUDONYMS)
    store = make_engine(urls[PSEUDONYMS])
    pseudonym_service(settings, store)  # migrates the pseudonym store
    store.dispose()
    columns = (
        *Progress.get_default_columns()[:-1],
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("seeding citizens", total=citizens)
        report = run_seed(citizens, seed_value, urls, lambda n: progress.advance(task, n))
    table = Table(
        title=f"{report.citizens} citizens, {report.households} households in {report.seconds:.1f} s"
    )
    table.add_column("registry")
    table.add_column("rows", justify="right")
    for name, rows in report.rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)


def main() -> None:
    app()
