"""The ``onceonly`` command line (typer + rich).

``demo`` and ``serve`` run the reference federation locally on SQLite; ``central`` and ``node``
run one component each for real deployments; ``keys``, ``registry`` and ``db`` manage an instance.
Settings come from ``ONCEONLY_*`` environment variables (``exchange.settings.Settings``); options
here override the data directory and the database. Nothing happens at import time.

Errors have one path (``_OneLineErrors``): an ``OnceOnlyError`` (a missing key, a port in use, a
bad identifier …) or an ``OSError`` becomes one line on stderr and exit code 2, never a traceback.
Secrets are never taken as argument values (they would show in ``ps`` and shell history): the
auditor token comes from ``ONCEONLY_AUDIT_TOKEN`` or ``--token-file``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from exchange.db import make_engine, upgrade
from exchange.errors import ClientError, ConfigurationError, OnceOnlyError, TransportError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import KeyStore
from exchange.node.app import database_url
from exchange.provisioning import (
    init_instance,
    issue_api_key,
    provision_subsystem,
    revoke_api_keys,
)
from exchange.registry_admin import RegistryAdmin
from exchange.settings import Settings

__all__ = ["AUDIT_TOKEN_ENV", "app", "main"]

AUDIT_TOKEN_ENV = "ONCEONLY_AUDIT_TOKEN"  # noqa: S105 (the variable's name, not a secret)
err = Console(stderr=True)


class _OneLineErrors(typer.core.TyperGroup):
    """The CLI's one error path: what an operator can fix is one line on stderr and exit 2."""

    def invoke(self, ctx: Any) -> Any:  # typer's Context base lives in its private ``_click``
        try:
            return super().invoke(ctx)
        except OnceOnlyError as exc:
            err.print(f"[red]error[/red] ({exc.code}): {escape(exc.detail)}", soft_wrap=True)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            err.print(
                f"[red]error[/red]: {escape(str(exc.strerror or exc))}{where}", soft_wrap=True
            )
        raise typer.Exit(2)


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback must never print keys or tokens
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


def _admin(settings: Settings) -> RegistryAdmin:
    engine = make_engine(database_url(settings, "central"))
    upgrade(engine)
    return RegistryAdmin(engine)


def _split(values: str) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()]


# --- keys ----------------------------------------------------------------------------------------

Subsystem = Annotated[
    str, typer.Argument(help="a subsystem id INSTANCE/CLASS/MEMBER/SUBSYSTEM", show_default=False)
]
Client = Annotated[
    str,
    typer.Argument(
        help="the calling subsystem INSTANCE/CLASS/MEMBER/SUBSYSTEM", show_default=False
    ),
]
Service = Annotated[
    str,
    typer.Argument(
        help="a service id INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]", show_default=False
    ),
]


@keys_app.command("init")
def keys_init(
    instance: Annotated[str, typer.Option(help="instance id, e.g. JP")] = "JP",
    data_dir: DataDir = None,
) -> None:
    """Create the instance CA, the central signing key, the trust anchor and the consent
    service's keys (idempotent: existing keys are kept, never replaced)."""
    from exchange.node.compose import provision_consent_keys

    settings = _settings(data_dir)
    keys = KeyStore(settings.data_dir)
    created = init_instance(keys, instance, now=_now())
    made = provision_consent_keys(settings)
    what = "created" if created or made else "already present"
    console.print(f"instance [bold]{instance}[/bold] keys {what} in {settings.data_dir}")
    for path in made:
        console.print(f"created {path}", soft_wrap=True)
    console.print(f"trust anchor for nodes: {keys.anchor}", soft_wrap=True)


@keys_app.command("member")
def keys_member(subsystem: Subsystem, data_dir: DataDir = None) -> None:
    """Make a subsystem's signing key and its CA-issued certificate, and the member's audit log
    key if it has none; print the certificate path."""
    from exchange.node.compose import provision_audit_key

    settings = _settings(data_dir)
    client = ClientId.parse(subsystem)
    keys = KeyStore(settings.data_dir)
    provision_subsystem(keys, client, now=_now())
    made = provision_audit_key(settings, str(client.member))
    if made is not None:
        err.print(
            f"created the audit log key {made}: give auditors its public key "
            f"(`onceonly audit key {client.member}`)",
            soft_wrap=True,
        )
    console.print(str(keys.subsystem_cert(client)), soft_wrap=True)


@keys_app.command("dev-issuer")
def keys_dev_issuer(data_dir: DataDir = None) -> None:
    """Make the development token issuer's key (trials only; in production set
    ONCEONLY_JWT_PUBLIC_KEY_FILE to your identity provider's public key instead)."""
    from exchange.tokens import DevIssuer

    settings = _settings(data_dir)
    DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    console.print(str(KeyStore(settings.data_dir).dev_issuer_key), soft_wrap=True)


def _client_node_engine(settings: Settings, client: str) -> tuple[ClientId, Engine]:
    """CLIENT parsed, and its member's node database (migrated)."""
    cid = ClientId.parse(client)
    engine = make_engine(database_url(settings, f"node-{str(cid.member).replace('/', '_')}"))
    upgrade(engine)
    return cid, engine


@keys_app.command("api-key")
def keys_api_key(client: Client, data_dir: DataDir = None) -> None:
    """Issue an API key for a departmental system calling its node as CLIENT (shown once)."""
    cid, engine = _client_node_engine(_settings(data_dir), client)
    console.print(
        issue_api_key(engine, node=str(cid.member), client=cid, now=_now()), soft_wrap=True
    )


@keys_app.command("revoke-api-key")
def keys_revoke_api_key(client: Client, data_dir: DataDir = None) -> None:
    """Revoke every API key of CLIENT at its node (a running node stops accepting them within 5 s)."""
    cid, engine = _client_node_engine(_settings(data_dir), client)
    count = revoke_api_keys(engine, node=str(cid.member), client=cid)
    console.print(f"revoked {count} API key(s) of {cid}")


# --- registry ------------------------------------------------------------------------------------


@registry_app.command("add-member")
def registry_add_member(
    member: Annotated[
        str, typer.Argument(help="a member id INSTANCE/CLASS/MEMBER", show_default=False)
    ],
    name: Annotated[str, typer.Option(help="the member's name (Japanese)", show_default=False)],
    name_en: Annotated[str, typer.Option(help="the member's name in English")] = "",
    address: Annotated[str | None, typer.Option(help="base URL of the member's node")] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a member organisation (or update its names and node address)."""
    _admin(_settings(data_dir)).add_member(
        MemberId.parse(member), name, name_en=name_en, address=address
    )


@registry_app.command("add-subsystem")
def registry_add_subsystem(
    subsystem: Subsystem,
    name: Annotated[str, typer.Option(help="the subsystem's display name")] = "",
    cert: Annotated[
        Path | None, typer.Option(help="PEM certificate issued by `keys member`")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a member's subsystem, with the certificate its node signs with."""
    client = ClientId.parse(subsystem)
    pem = cert.read_text() if cert is not None else None  # before any change to the registry
    admin = _admin(_settings(data_dir))
    admin.add_subsystem(client, name=name)
    if pem is not None:
        admin.add_certificate(client, pem)


@registry_app.command("add-service")
def registry_add_service(
    service: Service,
    fields: Annotated[str, typer.Option(help="comma-separated data fields", show_default=False)],
    purposes: Annotated[str, typer.Option(help="comma-separated purposes", show_default=False)],
    description: Annotated[str, typer.Option(help="what the service returns or changes")] = "",
    changes: Annotated[bool, typer.Option(help="the service changes the registry")] = False,
    data_dir: DataDir = None,
) -> None:
    """Add a service a subsystem provides: its fields and the purposes it may be used for."""
    _admin(_settings(data_dir)).add_service(
        ServiceId.parse(service),
        description=description,
        fields=_split(fields),
        purposes=_split(purposes),
        changes=changes,
    )


@registry_app.command("grant")
def registry_grant(client: Client, service: Service, data_dir: DataDir = None) -> None:
    """Let CLIENT call SERVICE (access right)."""
    _admin(_settings(data_dir)).grant(ClientId.parse(client), ServiceId.parse(service))


@registry_app.command("revoke-right")
def registry_revoke_right(client: Client, service: Service, data_dir: DataDir = None) -> None:
    """Take back CLIENT's access right to SERVICE."""
    _admin(_settings(data_dir)).revoke_right(ClientId.parse(client), ServiceId.parse(service))


@registry_app.command("revoke-cert")
def registry_revoke_cert(
    fingerprint_or_serial: Annotated[
        str,
        typer.Argument(help="the certificate's SHA-256 fingerprint or serial", show_default=False),
    ],
    data_dir: DataDir = None,
) -> None:
    """Revoke a subsystem certificate: nodes refuse its signatures from the next registry on."""
    _admin(_settings(data_dir)).revoke_certificate(fingerprint_or_serial)


@registry_app.command("add-statute")
def registry_add_statute(
    statute_id: Annotated[
        str, typer.Argument(help="an id of your choosing for this basis", show_default=False)
    ],
    service: Annotated[str, typer.Option(help="the service id", show_default=False)],
    client: Annotated[str, typer.Option(help="the calling subsystem id", show_default=False)],
    purposes: Annotated[str, typer.Option(help="comma-separated purposes", show_default=False)],
    fields: Annotated[str, typer.Option(help="comma-separated fields", show_default=False)],
    ordinance: Annotated[
        str, typer.Option(help="the statute's reference, e.g. jp-local-tax-act/art294")
    ],
    title_ja: Annotated[str, typer.Option(help="the statute's title (Japanese)")] = "",
    title_en: Annotated[str, typer.Option(help="the statute's title in English")] = "",
    data_dir: DataDir = None,
) -> None:
    """A statutory basis: CLIENT may get FIELDS of SERVICE for PURPOSES without consent."""
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


@registry_app.command("show")
def registry_show(
    as_json: Annotated[bool, typer.Option("--json", help="print the document as JSON")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show the registry's services and who may call them (or the whole document as JSON)."""
    settings = _settings(data_dir)
    keys = KeyStore(settings.data_dir)
    doc = _admin(settings).document(
        instance=keys.instance(), ca_pem="", central_url=settings.central_url, now=_now()
    )
    if as_json:
        console.print_json(json.dumps(doc.model_dump(mode="json", exclude={"ca_certificate"})))
        return
    table = Table(title=f"registry {doc.instance}, serial {doc.serial}")
    for col in ("service", "fields", "purposes", "clients"):
        table.add_column(col, overflow="fold")
    for s in doc.services:
        clients = [r.client for r in doc.access_rights if r.service == s.id]
        table.add_row(s.id, ", ".join(s.fields), ", ".join(s.purposes), "\n".join(clients))
    console.print(table)


# --- db ------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    component: Annotated[
        str, typer.Option(help="central, or node-<INSTANCE_CLASS_CODE>")
    ] = "central",
    data_dir: DataDir = None,
) -> None:
    """Apply every package's migrations to a component's database."""
    settings = _settings(data_dir)
    upgrade(make_engine(database_url(settings, component)))
    console.print(f"{component}: up to date")


# --- audit ---------------------------------------------------------------------------------------


@audit_app.command("key")
def audit_key(
    log_id: Annotated[
        str, typer.Argument(help="a member id, or consent-service", show_default=False)
    ],
    data_dir: DataDir = None,
) -> None:
    """Print a log's public note key (vkey), to hand to auditors out of band.

    Only reads the key: a log that has no key here is an error, never a new key."""
    from exchange.node.compose import CONSENT_LOG, audit_log

    if log_id != CONSENT_LOG:
        log_id = str(MemberId.parse(log_id))
    settings = _settings(data_dir)
    console.print(audit_log(settings, make_engine("sqlite://"), log_id).vkey(), soft_wrap=True)


def _audit_token(token_file: Path | None) -> str | None:
    """The auditor's bearer token: from ``--token-file`` or ``ONCEONLY_AUDIT_TOKEN``, never from
    an argument value (which other users see in ``ps`` and the shell keeps in its history)."""
    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise ConfigurationError(f"the token file {token_file} is empty")
        return token
    return os.environ.get(AUDIT_TOKEN_ENV) or None


def _fetch_log(node: str, token: str | None) -> tuple[str, list[str]]:
    """A node's latest checkpoint and its export (JSON Lines)."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    base = node.rstrip("/")
    try:
        with httpx.Client(timeout=120) as client:
            cp = client.get(f"{base}/audit/checkpoint", headers=headers)
            cp.raise_for_status()
            ex = client.get(f"{base}/audit/export", headers=headers)
            ex.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise TransportError(
            f"{exc.request.url} answered {exc.response.status_code}"
            + (
                f": set {AUDIT_TOKEN_ENV} or --token-file"
                if exc.response.status_code == 401
                else ""
            )
        ) from exc
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot fetch the log from {base}: {exc}") from exc
    return cp.text, ex.text.splitlines()


@audit_app.command("verify")
def audit_verify(
    key: Annotated[
        str,
        typer.Option(
            help="the log's vkey (from `onceonly audit key`), obtained out of band",
            show_default=False,
        ),
    ],
    checkpoint: Annotated[Path | None, typer.Option(help="a signed checkpoint file")] = None,
    export: Annotated[Path | None, typer.Option(help="the log exported as JSON Lines")] = None,
    node: Annotated[
        str | None, typer.Option(help="fetch checkpoint and export from this node URL")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help=f"a file holding the auditor bearer token for --node (or set {AUDIT_TOKEN_ENV})"
        ),
    ] = None,
    earlier: Annotated[
        Path | None, typer.Option(help="a checkpoint saved before: must be consistent")
    ] = None,
    save: Annotated[Path | None, typer.Option(help="save the verified checkpoint here")] = None,
) -> None:
    """Verify a log offline: every checkpoint signature, the root over every entry, consistency
    with an earlier checkpoint; name the first bad entry. Exit 0 only when all holds."""
    from audit.verify import verify_export

    if node:
        checkpoint_text, lines = _fetch_log(node, _audit_token(token_file))
    elif checkpoint and export:
        checkpoint_text = checkpoint.read_text()
        lines = export.read_text().splitlines()
    else:
        raise ClientError("give --checkpoint and --export, or --node")
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
        err.print(f"  - {escape(reason)}", soft_wrap=True)
    raise typer.Exit(1)


# --- components ----------------------------------------------------------------------------------

Host = Annotated[str, typer.Option(help="the address to listen on")]


def _run(host: str, port: int, build: Callable[[], FastAPI]) -> None:
    """Bind first, so that a port in use fails (one line, exit 2) before keys and databases are
    touched; then build the app and serve it on that socket."""
    from exchange.federation import free_socket

    with free_socket(host, port) as sock:
        config = uvicorn.Config(build(), log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])


@app.command()
def central(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8100,
    data_dir: DataDir = None,
) -> None:
    """Run the central server (serves the signed registry and the consent service)."""
    from exchange.node.central import create_central_app
    from exchange.node.compose import build_central_routers

    settings = _settings(data_dir)
    _run(
        host,
        port,
        lambda: create_central_app(
            settings, routers=lambda view: build_central_routers(settings, view)
        ),
    )


@app.command()
def node(
    member: Annotated[
        str,
        typer.Option(help="the member this node serves, e.g. JP/GOV/132098", show_default=False),
    ],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8101,
    data_dir: DataDir = None,
) -> None:
    """Run one member's node (security server)."""
    from exchange.node.app import create_node_app
    from exchange.node.compose import build_node_parts

    settings = _settings(data_dir)
    mid = MemberId.parse(member)
    _run(host, port, lambda: create_node_app(settings, mid, build_node_parts(settings, mid)))


@app.command()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="keep the demo's data here (default: a fresh temporary directory)"),
    ] = None,
    citizens: Annotated[int, typer.Option(help="synthetic citizens to seed")] = 200,
) -> None:
    """A scripted tour: start a local federation, make signed exchanges, show the results, stop."""
    from exchange.demo import run_demo

    raise typer.Exit(asyncio.run(run_demo(console, data_dir=data_dir, citizens=citizens)))


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="the loopback port to serve everything on")] = 8000,
    citizens: Annotated[int, typer.Option(help="synthetic citizens to seed")] = 1000,
    data_dir: DataDir = None,
) -> None:
    """Run the reference federation on one port and leave it running (Ctrl-C stops it)."""
    from exchange.demo import run_serve

    asyncio.run(run_serve(console, _settings(data_dir), port=port, citizens=citizens))


@app.command()
def seed(
    citizens: Annotated[int, typer.Option(help="synthetic citizens to generate")] = 1000,
    seed_value: Annotated[int, typer.Option("--seed", help="same seed, same data")] = 20261123,
    data_dir: DataDir = None,
) -> None:
    """Fill the reference registries with realistic synthetic citizens of Machida (no real persons)."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from adapters.reference.registries import REFERENCE_REGISTRIES
    from adapters.seed import seed as run_seed
    from exchange.node.compose import PSEUDONYMS, pseudonym_service, registry_database_url

    settings = _settings(data_dir)
    urls = {r.subsystem: registry_database_url(settings, r.subsystem) for r in REFERENCE_REGISTRIES}
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
