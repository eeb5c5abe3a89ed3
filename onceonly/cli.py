"""The ``onceonly`` command line (typer + rich).

``demo`` and ``serve`` run the reference federation locally on SQLite; ``central``, ``node`` and
``portal`` run one component each for real deployments; ``keys``, ``registry`` and ``db`` manage
an instance. Settings come from ``ONCEONLY_*`` environment variables
(``exchange.settings.Settings``; the portal's own ``ONCEONLY_PORTAL_*``, ``portal.settings``);
options here override the data directory and the database. Nothing happens at import time.

Errors have one path (``_OneLineErrors``): an ``OnceOnlyError`` (a missing key, a port in use, a
bad identifier …) or an ``OSError`` becomes one line on stderr and exit code 2, never a traceback.
Secrets are never taken as argument values (they would show in ``ps`` and shell history): the
auditor token comes from ``ONCEONLY_AUDIT_TOKEN`` or ``--token-file``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from exchange.db import database_url, make_engine, upgrade
from exchange.errors import ClientError, ConfigurationError, OnceOnlyError, TransportError
from exchange.identifiers import ClientId, MemberId, ServiceId
from exchange.keystore import KeyStore
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
from onceonly.components import COMPONENT_BRANCHES, provision_audit_key, provision_consent_keys

if TYPE_CHECKING:  # the servers are imported by the commands that run them, not by every command
    from fastapi import FastAPI
    from sqlalchemy import Engine

if TYPE_CHECKING:
    from consent.artefact import ConsentReceiptVerifier
    from consent.mandates import MandateService

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
pseudonyms_app = typer.Typer(
    no_args_is_help=True, help="The pseudonym translator's store (central operator)"
)
app.add_typer(pseudonyms_app, name="pseudonyms")
consent_app = typer.Typer(
    no_args_is_help=True, help="The consent service: its public key, signed receipts offline"
)
app.add_typer(consent_app, name="consent")
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
    upgrade(engine, COMPONENT_BRANCHES["central"])
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
    """Make a subsystem's signing key, its CA-issued certificate and its sealing key pair (each
    only once), and the member's audit log key if it has none; print the certificate path and
    the sealing public key's file."""
    settings = _settings(data_dir)
    client = ClientId.parse(subsystem)
    keys = KeyStore(settings.data_dir)
    provision_subsystem(keys, client, now=_now())
    provision_sealing_key(keys, client)  # writes the public half beside the key
    _member_audit_key(settings, client)
    console.print(str(keys.subsystem_cert(client)), soft_wrap=True)
    console.print(str(keys.subsystem_seal_public(client)), soft_wrap=True)


def _member_audit_key(settings: Settings, client: ClientId) -> None:
    """The member's audit log key, made if it has none (its node refuses to start without)."""
    made = provision_audit_key(settings, str(client.member))
    if made is not None:
        err.print(
            f"created the audit log key {made}: give auditors its public key "
            f"(`onceonly audit key {client.member}`)",
            soft_wrap=True,
        )


@keys_app.command("dev-issuer")
def keys_dev_issuer(data_dir: DataDir = None) -> None:
    """Make the development token issuer's key (trials only; in production set
    ONCEONLY_JWT_PUBLIC_KEY_FILE to your identity provider's public key instead) and write its
    public key beside it, for components in other data directories (their
    ONCEONLY_JWT_PUBLIC_KEY_FILE); print both paths."""
    from exchange.tokens import DevIssuer

    settings = _settings(data_dir)
    issuer = DevIssuer.load_or_create(
        settings.data_dir, issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    keys = KeyStore(settings.data_dir)
    keys.dev_issuer_public.write_bytes(issuer.public_key_pem())
    console.print(str(keys.dev_issuer_key), soft_wrap=True)
    console.print(str(keys.dev_issuer_public), soft_wrap=True)


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
    created = join_instance(KeyStore(settings.data_dir), instance, anchor.read_text())
    what = "pinned" if created else "already pinned"
    console.print(
        f"instance [bold]{instance}[/bold] and its trust anchor {what} in {settings.data_dir}"
    )


@keys_app.command("request")
def keys_request(subsystem: Subsystem, data_dir: DataDir = None) -> None:
    """Make a subsystem's signing and sealing keys here (and the member's audit log key if it has
    none) and a certificate request for the central operator; print the request's path and the
    sealing public key's file (both go to the central operator; the private keys stay in this
    data directory)."""
    settings = _settings(data_dir)
    keys = KeyStore(settings.data_dir)
    client = ClientId.parse(subsystem)
    path = request_subsystem(keys, client)
    _member_audit_key(settings, client)
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
    subsystem, pem = sign_request(KeyStore(settings.data_dir), request.read_text(), now=_now())
    out.write_text(pem)
    console.print(f"certificate for {subsystem} written to {out}", soft_wrap=True)


@keys_app.command("install-cert")
def keys_install_cert(
    cert: Annotated[Path, typer.Argument(help="the certificate the central operator issued")],
    data_dir: DataDir = None,
) -> None:
    """Put an issued certificate beside the subsystem key it certifies."""
    settings = _settings(data_dir)
    subsystem = install_certificate(KeyStore(settings.data_dir), cert.read_text())
    console.print(f"certificate installed for {subsystem}", soft_wrap=True)


def _client_node_engine(settings: Settings, client: str) -> tuple[ClientId, Engine]:
    """CLIENT parsed, and its member's node database (migrated)."""
    cid = ClientId.parse(client)
    engine = make_engine(database_url(settings, f"node-{str(cid.member).replace('/', '_')}"))
    upgrade(engine, COMPONENT_BRANCHES["node"])
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
    seal_key: Annotated[
        Path | None, typer.Option(help="sealing public key file written by `keys member` (.pub)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a member's subsystem, with the certificate its node signs with and the sealing
    public key the pseudonym translator seals its codes to."""
    client = ClientId.parse(subsystem)
    # Both files are read before any change to the registry.
    pem = cert.read_text() if cert is not None else None
    seal = SealingPublicKey.parse(seal_key.read_text().strip()) if seal_key is not None else None
    admin = _admin(_settings(data_dir))
    admin.add_subsystem(client, name=name)
    if pem is not None:
        admin.add_certificate(client, pem)
    if seal is not None:
        admin.set_seal_key(client, seal)


@registry_app.command("set-translator")
def registry_set_translator(
    url: Annotated[
        str, typer.Option(help="base URL of the central server serving it", show_default=False)
    ],
    data_dir: DataDir = None,
) -> None:
    """Name the pseudonym translator; its token key and its audit log key are made in the data
    directory the first time (never replaced), and the central server loads them at start."""
    from adapters.translator import TRANSLATOR_LOG

    settings = _settings(data_dir)
    public_key = provision_translator_key(KeyStore(settings.data_dir))
    made = provision_audit_key(settings, TRANSLATOR_LOG)
    _admin(settings).set_translator(url, public_key)
    if made is not None:
        err.print(
            f"created the audit log key {made}: give auditors its public key "
            f"(`onceonly audit key {TRANSLATOR_LOG}`)",
            soft_wrap=True,
        )


@registry_app.command("set-consent-service")
def registry_set_consent_service(
    url: Annotated[
        str, typer.Option(help="base URL of the central server hosting it", show_default=False)
    ],
    data_dir: DataDir = None,
) -> None:
    """Name the consent service (information bank) and publish its artefact key: provider nodes
    verify consent artefacts with that key and ask the service at URL (the key is made by
    `keys init`, never here)."""
    from onceonly.wiring import consent_issuer_key

    settings = _settings(data_dir)
    public_key = consent_issuer_key(settings).public_key_pem()  # read before any change
    _admin(settings).set_consent_service(url, public_key)


@registry_app.command("add-service")
def registry_add_service(
    service: Service,
    fields: Annotated[str, typer.Option(help="comma-separated data fields", show_default=False)],
    purposes: Annotated[str, typer.Option(help="comma-separated purposes", show_default=False)],
    description: Annotated[str, typer.Option(help="what the service returns or changes")] = "",
    changes: Annotated[bool, typer.Option(help="the service changes the registry")] = False,
    event_of: Annotated[
        str | None,
        typer.Option(help="a change event: the change service whose calls it publishes"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a service a subsystem provides: its fields and the purposes it may be used for."""
    _admin(_settings(data_dir)).add_service(
        ServiceId.parse(service),
        description=description,
        fields=_split(fields),
        purposes=_split(purposes),
        changes=changes,
        event_of=ServiceId.parse(event_of) if event_of else None,
    )


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

    for sid in register_services(_admin(_settings(data_dir)), load_registries(from_file)):
        console.print(str(sid), soft_wrap=True)


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
    restricted_days: Annotated[
        int | None,
        typer.Option(
            help="a restricted statute (law-enforcement or covert queries): each exchange on "
            "this basis is kept from the citizen's view for this many days, then shown",
            show_default=False,
        ),
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option(
            help="the recipient deletes data received on this basis after this many days "
            "(the delete-by date of the usage terms; 365 when not given)",
            show_default=False,
        ),
    ] = None,
    onward_transfer: Annotated[
        bool,
        typer.Option(
            "--onward-transfer/--no-onward-transfer",
            help="whether the recipient may pass the data on to another agency",
        ),
    ] = False,
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
        restricted_days=restricted_days,
        retention_days=retention_days,
        onward_transfer=onward_transfer,
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
        str,
        typer.Option(
            help="central, node-<INSTANCE_CLASS_CODE>, consent, consent-audit, procedures, "
            "registries or translator-audit"
        ),
    ] = "central",
    data_dir: DataDir = None,
) -> None:
    """Apply a component's own migrations to its database (each component has its own tables)."""
    settings = _settings(data_dir)
    kind = "node" if component.startswith("node-") else component
    if kind not in COMPONENT_BRANCHES:
        raise ClientError(
            f"no component named {component!r} (one of: node-<MEMBER>, "
            + ", ".join(sorted(k for k in COMPONENT_BRANCHES if k != "node"))
            + ")"
        )
    upgrade(make_engine(database_url(settings, component)), COMPONENT_BRANCHES[kind])
    console.print(f"{component}: up to date")


# --- audit ---------------------------------------------------------------------------------------


@pseudonyms_app.command("enrol")
def pseudonyms_enrol(
    agency: Annotated[
        str,
        typer.Argument(
            help="the subsystem whose codes to issue, e.g. JP/GOV/132098/resident-registry"
        ),
    ],
    citizen_keys: Annotated[
        Path,
        typer.Option(help="one citizen key a line (the identifier the operator and agency share)"),
    ],
    out: Annotated[
        Path, typer.Option(help="where to write 'citizen key<TAB>code' lines for the agency (0600)")
    ],
    own_codes: Annotated[
        bool,
        typer.Option(
            help="the agency keeps its own identifiers (e.g. the resident registry's 住民票コード):"
            " each citizen key is registered as its code instead of issuing a new one"
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Issue AGENCY's codes (機関別符号) for citizens at the translator, or register the agency's
    own identifiers as its codes (idempotent: a citizen who has a code keeps it). The file goes to
    that agency only: it holds its own codes, no other's."""
    from adapters.pseudonyms import PseudonymService
    from exchange.ports import CITIZEN_AGENCY
    from onceonly.wiring import PSEUDONYMS, registry_database_url

    settings = _settings(data_dir)
    client = ClientId.parse(agency)
    keys = [k.strip() for k in citizen_keys.read_text(encoding="utf-8").splitlines() if k.strip()]
    engine = make_engine(registry_database_url(settings, PSEUDONYMS))
    upgrade(engine, COMPONENT_BRANCHES["registries"])
    issue = PseudonymService(engine, (CITIZEN_AGENCY, str(client)))
    citizens = PseudonymService(engine, (CITIZEN_AGENCY,))

    def code_of(key: str) -> str:
        if not own_codes:
            return issue.enrol(key)[str(client)]
        citizens.enrol(key)  # a platform identity of its own, never the agency's identifier
        kept = PseudonymService(engine, (str(client),), token=lambda: key)
        return kept.enrol(key)[str(client)]

    lines = [f"{k}\t{code_of(k)}\n" for k in keys]
    engine.dispose()
    out.touch(mode=0o600)
    out.write_text("".join(lines), encoding="utf-8")
    console.print(f"{len(lines)} codes of {client} written to {out}", soft_wrap=True)


@audit_app.command("key")
def audit_key(
    log_id: Annotated[
        str,
        typer.Argument(
            help="a member id, consent-service or pseudonym-translator", show_default=False
        ),
    ],
    data_dir: DataDir = None,
) -> None:
    """Print a log's public note key (vkey), to hand to auditors out of band.

    Only reads the key: a log that has no key here is an error, never a new key."""
    from adapters.translator import TRANSLATOR_LOG
    from onceonly.wiring import CONSENT_LOG, audit_log

    if log_id not in (CONSENT_LOG, TRANSLATOR_LOG):
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
        checkpoint_text,
        lines,
        key,
        earlier_checkpoint=earlier.read_text() if earlier else None,
        now=_now(),
    )
    if report:
        console.print(
            f"[green]verified[/green]: {report.entries} entries, checkpoint size "
            f"{report.checkpoint.size if report.checkpoint else '?'}"
        )
        if report.overdue:
            err.print(
                f"[yellow]{len(report.overdue)} restricted entries are past their release time "
                f"and not released[/yellow]: {', '.join(map(str, report.overdue[:20]))}"
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


def _get_json(url: str, token: str | None, params: dict[str, str]) -> Any:
    """One auditor API call (``--node``), its errors as one line."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url, headers=headers, params=params, timeout=60)
        r.raise_for_status()
        return r.json()
    except httpx.HTTPStatusError as exc:
        hint = f": set {AUDIT_TOKEN_ENV} or --token-file" if exc.response.status_code == 401 else ""
        raise TransportError(
            f"{exc.request.url} answered {exc.response.status_code}{hint}"
        ) from exc
    except (httpx.HTTPError, ValueError) as exc:
        raise TransportError(f"cannot read {url}: {exc}") from exc


@audit_app.command("restricted")
def audit_restricted(
    node: Annotated[str, typer.Option(help="the node's URL", show_default=False)],
    overdue: Annotated[
        bool,
        typer.Option(
            "--overdue", help="only those past their release time and not released (exit 1 if any)"
        ),
    ] = False,
    token_file: Annotated[
        Path | None,
        typer.Option(help=f"a file holding the auditor bearer token (or set {AUDIT_TOKEN_ENV})"),
    ] = None,
) -> None:
    """List a node's restricted entries (exchanges under a restricted statute): statute, release
    time, the release entry once released — never whom they are about."""
    token = _audit_token(token_file)
    url = f"{node.rstrip('/')}/audit/restricted"
    params = {"overdue": "true" if overdue else "false", "limit": "1000"}
    table = Table(title="overdue restricted entries" if overdue else "restricted entries")
    for col in ("entry", "statute", "client", "restricted until", "released by", "problem"):
        table.add_column(col, overflow="fold")
    count = 0
    while True:
        body = _get_json(url, token, params)
        for e in body.get("entries", []):
            count += 1
            table.add_row(
                str(e.get("index")),
                str(e.get("statute") or "—"),
                str(e.get("entry", {}).get("client") or "—"),
                str(e.get("restricted_until") or "—"),
                "—" if e.get("released_by") is None else str(e["released_by"]),
                ("OVERDUE " if e.get("overdue") else "") + str(e.get("problem") or ""),
            )
        if not body.get("next_cursor"):
            break
        params["cursor"] = str(body["next_cursor"])
    console.print(table)
    console.print(f"{count} {'overdue ' if overdue else ''}restricted entries")
    if overdue and count:
        raise typer.Exit(1)


@audit_app.command("verify-record")
def audit_verify_record(
    record: Annotated[
        Path, typer.Argument(help="the record file the portal's access page downloads (JSON)")
    ],
    key: Annotated[
        str,
        typer.Option(
            help="the node log's vkey (from `onceonly audit key`), obtained out of band",
            show_default=False,
        ),
    ],
) -> None:
    """Verify a citizen's record offline: the checkpoint is signed by the pinned log key and the
    record holds every entry about the citizen up to it (completeness proof). Exit 0 only then."""
    from audit.checkpoint import NoteVerifier
    from audit.completeness import CompletenessError, SubjectProof, verify_record

    try:
        data = json.loads(record.read_text())
        completeness = data["completeness"]
        proofs = [SubjectProof.from_json(p) for p in completeness["proofs"]]
        entries = [(int(a["index"]), dict(a["entry"])) for a in data["accesses"]]
        note = completeness["checkpoint"]
    except (ValueError, KeyError, TypeError, CompletenessError) as exc:
        raise ClientError(f"{record} is not a record file from the portal") from exc
    try:
        cp = verify_record(str(note), NoteVerifier.from_vkey(key), proofs, entries)
    except CompletenessError as exc:
        err.print(f"[red]NOT verified[/red]: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    covered = sum(1 for index, _ in entries if index < cp.size)
    console.print(
        f"[green]verified[/green]: complete up to checkpoint {cp.size} — {covered} entries about "
        f"you, none missing ({len(proofs)} subject ids)"
    )


# --- consent ------------------------------------------------------------------------------------


@consent_app.command("key")
def consent_key(data_dir: DataDir = None) -> None:
    """Print the consent service's public key as a JWK Set (what GET /consent/v1/keys serves),
    to publish or hand out. Only reads the key: a missing key is an error, never a new key."""
    from onceonly.wiring import consent_issuer_key

    jwks = consent_issuer_key(_settings(data_dir)).receipt_verifier().jwks()
    typer.echo(json.dumps(jwks, indent=2))


def _receipt_jws(text: str) -> str:
    """The compact JWS in a receipt file: the JWS itself (``?format=jws``) or the receipt as
    JSON with its ``jws`` (``GET …/receipts/{id}``)."""
    text = text.strip()
    if not text.startswith("{"):
        return text
    try:
        jws = json.loads(text).get("jws")
    except (ValueError, AttributeError) as exc:
        raise ClientError("the receipt file is neither a JWS nor a receipt as JSON") from exc
    if not isinstance(jws, str):
        raise ClientError("the receipt carries no signature (issued before receipts were signed)")
    return jws


def _receipt_verifier(key: Path) -> ConsentReceiptVerifier:
    from consent.artefact import ConsentReceiptVerifier

    text = key.read_text(encoding="utf-8")
    if text.lstrip().startswith("-----BEGIN"):
        return ConsentReceiptVerifier.from_pem(text)
    try:
        return ConsentReceiptVerifier.from_jwks(json.loads(text))
    except ValueError as exc:
        raise ClientError(f"{key} is neither a PEM public key nor a JWK Set") from exc


@consent_app.command("verify-receipt")
def consent_verify_receipt(
    receipt: Annotated[
        Path,
        typer.Argument(
            help="the signed receipt: its JWS (?format=jws) or the receipt JSON", show_default=False
        ),
    ],
    key: Annotated[
        Path,
        typer.Option(
            help="the consent service's public key: a JWK Set (GET /consent/v1/keys, "
            "`onceonly consent key`) or a PEM",
            show_default=False,
        ),
    ],
) -> None:
    """Verify a consent receipt offline with the consent service's public key alone; print what
    it records. Exit 0 only when the signature holds."""
    from exchange.errors import VerificationError

    verifier = _receipt_verifier(key)
    try:
        document = verifier.verify(_receipt_jws(receipt.read_text(encoding="utf-8")))
    except VerificationError:
        err.print("[red]NOT verified[/red]: the signature does not hold for this key")
        raise typer.Exit(1) from None
    record = document["iso27560"]
    events = record.get("events") or [{}]
    console.print(
        f"[green]verified[/green]: receipt {escape(str(record.get('receipt_id')))} of consent "
        f"{escape(str(record.get('record_id')))} ({escape(str(events[-1].get('event_state')))} "
        f"at {escape(str(events[-1].get('event_time')))}), ISO/IEC TS 27560 and Kantara CR "
        f"{escape(str(document['kantara'].get('version')))}",
        soft_wrap=True,
    )


@contextlib.contextmanager
def _mandates(data_dir: Path | None) -> Iterator[MandateService]:
    """The consent service's mandates, on its database and log; both pools closed after."""
    from audit.sink import LogSink
    from onceonly.wiring import CONSENT_LOG, audit_log, consent_service

    settings = _settings(data_dir)
    engine = make_engine(database_url(settings, "consent"))
    log_engine = make_engine(database_url(settings, "consent-audit"))
    try:
        upgrade(log_engine, COMPONENT_BRANCHES["consent-audit"])
        log = LogSink(audit_log(settings, log_engine, CONSENT_LOG), log_engine)
        yield consent_service(settings, engine, audit=log).mandates()
    finally:
        engine.dispose()
        log_engine.dispose()


@consent_app.command("register-mandate")
def consent_register_mandate(
    representative: Annotated[
        str,
        typer.Option(
            help="the representative's subject at the consent service", show_default=False
        ),
    ],
    represented: Annotated[
        str, typer.Option(help="the represented person's subject", show_default=False)
    ],
    kind: Annotated[str, typer.Option(help="parent (of a minor) or guardian (成年後見人)")],
    basis: Annotated[
        str,
        typer.Option(
            help="the record it rests on: a household entry, a court's guardianship number",
            show_default=False,
        ),
    ],
    until: Annotated[
        str,
        typer.Option(
            help="end of validity, RFC 3339 (a minor's 18th birthday)", show_default=False
        ),
    ],
    purposes: Annotated[
        str, typer.Option(help="consent purpose codes, comma-separated, * for all")
    ] = "*",
    procedures: Annotated[str, typer.Option(help="procedures, comma-separated, * for all")] = "*",
    operator: Annotated[str, typer.Option(help="who registers it (recorded)")] = "operator",
    data_dir: DataDir = None,
) -> None:
    """Register a parent's or guardian's mandate from a registry or court record (docs/consent.md,
    Mandates); prints the mandate as JSON (its id, its X-Road-Represented-Party, the signed JWS)."""
    from consent.mandates import MandateRegistration

    def _list(text: str) -> list[str]:
        return [p.strip() for p in text.split(",") if p.strip()]

    try:
        registration = MandateRegistration.model_validate(
            {
                "representative": representative,
                "represented": represented,
                "kind": kind,
                "basis": basis,
                "valid_until": until,
                "purposes": _list(purposes),
                "procedures": _list(procedures),
            }
        )
    except ValueError as exc:
        raise ClientError(f"invalid mandate: {exc}") from None
    if registration.kind.value == "authorised":
        raise ClientError("an authorised person's mandate is granted by the represented person")
    with _mandates(data_dir) as mandates:
        done = mandates.register(registration, by=operator, now=datetime.now(UTC))
    typer.echo(done.model_dump_json(indent=2))


@consent_app.command("derive-parent-mandates")
def consent_derive_parent_mandates(
    node: Annotated[
        str,
        typer.Option(help="the one-stop subsystem's own node (http[s]://…)", show_default=False),
    ],
    api_key_file: Annotated[
        Path,
        typer.Option(help="a file holding the subsystem's API key at its node", show_default=False),
    ],
    parent: Annotated[str, typer.Option(help="the parent's citizen id", show_default=False)],
    child: Annotated[
        list[str], typer.Option(help="a child's citizen id (repeat the option)", show_default=False)
    ],
    client: Annotated[str, typer.Option(help="the subsystem asking")] = "JP/GOV/132098/one-stop",
    purposes: Annotated[
        str, typer.Option(help="consent purpose codes, comma-separated, * for all")
    ] = "*",
    procedures: Annotated[str, typer.Option(help="procedures, comma-separated, * for all")] = "*",
    operator: Annotated[str, typer.Option(help="who derives them (recorded)")] = "operator",
    data_dir: DataDir = None,
) -> None:
    """Derive a parent's statutory mandates from the resident registry, through the node: one
    ``parent`` mandate per minor child of the parent's household, valid until the child's 18th
    birthday (民法 第4条), its basis the exchange's message id; idempotent (docs/consent.md)."""
    from consent.statutory import derive_parent_mandates
    from onceonly.household import PURPOSE, read_household
    from procedures.one_stop import OneStopClient

    try:
        api_key = api_key_file.read_text().strip()
    except OSError as exc:
        raise ClientError(f"cannot read the API key file ({exc.strerror})") from None
    if not api_key:
        raise ClientError("the API key file is empty")
    if not node.startswith(("http://", "https://")):
        raise ClientError("--node must be an http:// or https:// URL")

    async def ask() -> Any:
        async with OneStopClient(node, api_key, client_id=client, purpose=PURPOSE) as one_stop:
            return await read_household(one_stop, parent, tuple(child))

    answer, refused = asyncio.run(ask())

    def _list(text: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in text.split(",") if p.strip())

    with _mandates(data_dir) as mandates:
        done = derive_parent_mandates(
            mandates,
            parent,
            answer,
            now=datetime.now(UTC),
            by=operator,
            purposes=_list(purposes),
            procedures=_list(procedures),
        )
    typer.echo(
        json.dumps(
            {
                "household": answer.household_id,
                "registered": [m.model_dump(mode="json") for m in done.registered],
                "kept": [m.id for m in done.kept],
                "adults": done.adults,
                "not_in_household": refused,
            },
            ensure_ascii=False,
            indent=2,
        )
    )


@consent_app.command("revoke-mandate")
def consent_revoke_mandate(
    mandate_id: Annotated[str, typer.Argument(help="the mandate's id", show_default=False)],
    operator: Annotated[str, typer.Option(help="who revokes it (recorded)")] = "operator",
    data_dir: DataDir = None,
) -> None:
    """Revoke a mandate for good (a guardianship ended, a household record changed)."""

    with _mandates(data_dir) as mandates:
        done = mandates.revoke(mandate_id, by=operator, now=datetime.now(UTC), operator=True)
    typer.echo(done.model_dump_json(indent=2))


# --- components ----------------------------------------------------------------------------------

Host = Annotated[str, typer.Option(help="the address to listen on")]


def _run(host: str, port: int, build: Callable[[], FastAPI]) -> None:
    """Bind first, so that a port in use fails (one line, exit 2) before keys and databases are
    touched; then build the app and serve it on that socket."""
    import uvicorn

    from onceonly.federation import free_socket

    with free_socket(host, port) as sock:
        config = uvicorn.Config(build(), log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])


def _run_workers(host: str, port: int, factory: str, workers: int) -> None:
    """``workers`` processes, each building its app with ``factory``, on one socket bound here
    first (a port in use is one line, exit 2, as in ``_run``)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from onceonly.federation import free_socket

    with free_socket(host, port) as sock:
        sock.set_inheritable(True)
        config = uvicorn.Config(
            factory, factory=True, workers=workers, log_level="warning", access_log=False
        )
        Multiprocess(config, sockets=[sock]).run()


@app.command()
def central(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8100,
    data_dir: DataDir = None,
) -> None:
    """Run the central server (serves the signed registry, the consent service and the
    pseudonym translator)."""
    from onceonly.wiring import central_app

    settings = _settings(data_dir)
    _run(host, port, lambda: central_app(settings))


@app.command()
def node(
    member: Annotated[
        str,
        typer.Option(help="the member this node serves, e.g. JP/GOV/132098", show_default=False),
    ],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8101,
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
    from onceonly.wiring import build_node_parts, require_node_keys, start_up_report

    settings = _settings(data_dir, registries_file=registries)
    mid = MemberId.parse(member)
    if workers == 1:

        def build() -> FastAPI:
            with start_up_report():  # e.g. which policy engine decides, and why
                return create_node_app(settings, mid, build_node_parts(settings, mid))

        _run(host, port, build)
        return
    # Each worker builds its own app from the environment (onceonly.asgi.node_app); the keys are
    # checked here first, so that a missing one is one line before any worker starts.
    require_node_keys(settings, mid)
    os.environ[NODE_MEMBER_ENV] = str(mid)
    os.environ["ONCEONLY_DATA_DIR"] = str(settings.data_dir.resolve())
    if settings.registries_file is not None:
        os.environ["ONCEONLY_REGISTRIES_FILE"] = str(settings.registries_file.resolve())
    _run_workers(host, port, "onceonly.asgi:node_app", workers)


@app.command()
def portal(
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="ONCEONLY_PORTAL_CONFIG",
            help="TOML settings (consent_url, nodes, desk_url, ...); ONCEONLY_PORTAL_* wins",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="the address to listen on (default from the settings)")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="the port to listen on (default from the settings)")
    ] = None,
) -> None:
    """Run the citizens' and auditors' portal on its own: it calls the consent service, the
    nodes and the one-stop desk over HTTP and opens no database (docs/portal.md)."""
    import uvicorn

    from onceonly.federation import free_socket
    from portal.remote import create_portal_app
    from portal.settings import load_portal_settings

    settings = load_portal_settings(config, host=host, port=port)
    with free_socket(settings.host, settings.port) as sock:
        application, close = create_portal_app(settings)
        try:
            config_ = uvicorn.Config(application, log_level="warning", access_log=False)
            uvicorn.Server(config_).run(sockets=[sock])
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

    run_desk(host=host, port=port)  # errors: the one CLI error path (one line, exit 2)


@app.command()
def runner(
    host: Annotated[str | None, typer.Option(help="address to listen on (health, metrics)")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run a procedure runner; several may share one PostgreSQL database (settings
    ONCEONLY_RUNNER_*, docs/operator.md)."""
    from onceonly.desk import run_runner

    run_runner(host=host, port=port)  # errors: the one CLI error path (one line, exit 2)


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
    port: Annotated[int, typer.Option(help="the loopback port to serve everything on")] = 8000,
    citizens: Annotated[int, typer.Option(help="synthetic citizens to seed")] = 1000,
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
