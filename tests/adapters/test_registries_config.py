"""The registries file (adapters.config): what it accepts, and errors that name the bad key."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters.config import HttpRegistry, SqlRegistry, load_registries
from adapters.factory import build_adapters, declared_services, resolve_base_url, resolve_dsn
from adapters.http import HttpAdapter
from adapters.reference import REFERENCE_FILE, REGISTRY_TABLES, reference_config
from adapters.sql import SqlAdapter
from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, ServiceId
from exchange.ports import AdapterRequest, AdapterResponse
from tests.adapters import upstream_server

LIBRARY = """
[[registries]]
id = "JP/GOV/132098/library"
kind = "sql"
dsn_env = "LIBRARY_DSN"
table = "library_cards"
key_column = "holder_id"

[[registries.services]]
code = "card"
version = "v1"
description = "The holder's library card"
purposes = ["library-services"]

[registries.services.fields]
card_number = "string"
expires_on = "date"
books_on_loan = { type = "integer", description = "貸出中の冊数" }

[[registries.services]]
code = "home-branch-change"
version = "v1"
description = "Move the card to another branch"
purposes = ["library-services"]
change = { fields = ["home_branch"] }

[registries.services.fields]
home_branch = { type = "string", column = "branch" }
"""


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "registries.toml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def _error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigurationError) as err:
        load_registries(_write(tmp_path, body))
    return err.value.detail


def test_reference_declaration_is_the_eight_registries_with_their_tables() -> None:
    config = load_registries(REFERENCE_FILE)
    assert config == reference_config()
    assert [r.subsystem for r in config.registries] == list(REGISTRY_TABLES)
    assert all(isinstance(r, SqlRegistry) for r in config.registries)
    assert set(config.members) == {r.member for r in config.registries}
    changes = {str(sid) for sid, desc, _ in declared_services(config) if desc.changes}
    assert "JP/GOV/132098/resident-registry/address-change/v1" in changes


def test_a_sql_registry_is_declared_with_typed_fields_and_a_change(tmp_path: Path) -> None:
    (decl,) = load_registries(_write(tmp_path, LIBRARY)).registries
    assert isinstance(decl, SqlRegistry)
    card, change = decl.service_configs()
    assert card.table == "library_cards"
    assert card.key_column == "holder_id"
    assert card.fields["expires_on"].type == "date"
    assert change.fields["home_branch"].column == "branch"
    assert change.update is not None
    assert change.update.required == ("home_branch",)  # required defaults to every field


@pytest.mark.parametrize(
    ("edit", "key_path"),
    [
        (
            ('expires_on = "date"', 'expires_on = "dat"'),
            "registries[0].services[0].fields.expires_on.type: Input should be",
        ),
        (
            ('key_column = "holder_id"', 'key_colum = "holder_id"'),
            "registries[0].key_colum: Extra inputs are not permitted",
        ),
        (('key_column = "holder_id"', ""), "registries[0].key_column: Field required"),
        (('kind = "sql"', 'kind = "ldap"'), "registries[0]: Input tag 'ldap'"),
        (
            ('id = "JP/GOV/132098/library"', 'id = "library"'),
            "registries[0].id: Value error, not a subsystem id",
        ),
        (
            ('change = { fields = ["home_branch"] }', 'change = { fields = ["address"] }'),
            "registries[0].services[1]: Value error, change names undeclared fields: ['address']",
        ),
        (
            ('dsn_env = "LIBRARY_DSN"', 'dsn = "postgresql://lib:hunter2@db/library"'),
            "registries[0].dsn: Value error, carries a password",
        ),
        (
            ('dsn_env = "LIBRARY_DSN"', 'dsn_env = "LIBRARY_DSN"\ndsn = "sqlite://"'),
            "registries[0]: Value error, give dsn or dsn_env, not both",
        ),
        (
            ('column = "branch"', 'column = "holder_id"'),
            "registries[0]: Value error, services[1]: Value error, the key column cannot be updated",
        ),
        (
            (
                'purposes = ["library-services"]\n\n[registries.services.fields]',
                "purposes = []\n\n[registries.services.fields]",
            ),
            "registries[0].services[0].purposes: Tuple should have at least 1 item",
        ),
    ],
)
def test_a_bad_sql_declaration_names_the_key_path(
    tmp_path: Path, edit: tuple[str, str], key_path: str
) -> None:
    old, new = edit
    assert old in LIBRARY
    detail = _error(tmp_path, LIBRARY.replace(old, new, 1))
    assert key_path in detail
    assert str(tmp_path) in detail  # which file


def test_a_password_in_the_file_is_not_echoed(tmp_path: Path) -> None:
    detail = _error(
        tmp_path, LIBRARY.replace('dsn_env = "LIBRARY_DSN"', 'dsn = "postgresql://u:hunter2@h/d"')
    )
    assert "hunter2" not in detail


HTTP = """
[[registries]]
id = "JP/GOV/132098/parking-permits"
kind = "http"
base_url = "http://127.0.0.1:9/api"
timeout_s = 2.5
openapi = "upstream.json"

[[registries.services]]
code = "permit"
version = "v1"
description = "The holder's parking permit"
purposes = ["parking"]
path = "/permits/{subject}"

[registries.services.fields]
zone = "string"
valid_until = "date"
"""

UPSTREAM_OPENAPI = (
    '{"openapi": "3.0.3", "info": {"title": "permits", "version": "1"}, '
    '"paths": {"/permits/{permitHolder}": {"get": {"responses": {"200": {"description": "ok"}}}}}}'
)


def test_an_http_registry_is_checked_against_the_upstream_openapi(tmp_path: Path) -> None:
    (tmp_path / "upstream.json").write_text(UPSTREAM_OPENAPI)
    (decl,) = load_registries(_write(tmp_path, HTTP)).registries
    assert isinstance(decl, HttpRegistry)
    assert decl.timeout_s == 2.5
    assert decl.openapi is not None

    detail = _error(
        tmp_path, HTTP.replace('path = "/permits/{subject}"', 'path = "/permit/{subject}"')
    )
    assert "registries[0]: Value error, services[0]: GET /permit/{subject} is not an operation" in (
        detail
    )
    (tmp_path / "upstream.json").unlink()
    assert "registries[0].openapi: Value error, cannot read the upstream OpenAPI" in _error(
        tmp_path, HTTP
    )


@pytest.mark.parametrize(
    ("edit", "key_path"),
    [
        (
            ('path = "/permits/{subject}"', 'path = "/permits/{id}"'),
            "registries[0].services[0].path: Value error, only {subject} may be substituted",
        ),
        (
            (
                'description = "The holder',
                'change = { fields = ["zone"] }\ndescription = "The holder',
            ),
            "registries[0].services[0]: Value error, a change operation cannot be a GET",
        ),
        (("timeout_s = 2.5", "timeout_s = 0"), "registries[0].timeout_s: Input should be greater"),
        (
            ("timeout_s = 2.5", 'headers = { Authorization = "Bearer s3cret" }'),
            "registries[0].headers: Value error, ['Authorization'] would put a secret",
        ),
        (
            ('valid_until = "date"', 'valid_until = { type = "date", column = "x" }'),
            "registries[0].services[0].fields.valid_until.column: Extra inputs are not permitted",
        ),
        (('base_url = "http://127.0.0.1:9/api"', 'base_url = "ftp://x"'), "registries[0].base_url"),
    ],
)
def test_a_bad_http_declaration_names_the_key_path(
    tmp_path: Path, edit: tuple[str, str], key_path: str
) -> None:
    (tmp_path / "upstream.json").write_text(UPSTREAM_OPENAPI)
    old, new = edit
    assert old in HTTP
    assert key_path in _error(tmp_path, HTTP.replace(old, new, 1))


def test_the_upstream_base_url_comes_from_the_named_environment_variable(tmp_path: Path) -> None:
    (tmp_path / "upstream.json").write_text(UPSTREAM_OPENAPI)
    from_env = HTTP.replace('base_url = "http://127.0.0.1:9/api"', 'base_url_env = "PERMITS_URL"')
    config = load_registries(_write(tmp_path, from_env))
    (decl,) = config.registries
    assert isinstance(decl, HttpRegistry)
    assert resolve_base_url(decl, env={"PERMITS_URL": "http://permits:8600"}) == (
        "http://permits:8600"
    )
    with pytest.raises(
        ConfigurationError, match="base_url_env names PERMITS_URL, which is not set"
    ):
        build_adapters(config, env={})
    with pytest.raises(ConfigurationError, match="PERMITS_URL, which is not an http") as refused:
        build_adapters(config, env={"PERMITS_URL": "ftp://s3cret@permits"})
    assert "s3cret" not in str(refused.value)
    both = from_env.replace('kind = "http"', 'kind = "http"\nbase_url = "http://x"')
    neither = HTTP.replace('base_url = "http://127.0.0.1:9/api"\n', "")
    for text_ in (both, neither):
        assert "registries[0]: Value error, give base_url or base_url_env" in _error(
            tmp_path, text_
        )


def test_the_same_registry_twice_and_a_bad_member_are_refused(tmp_path: Path) -> None:
    assert "<root>: Value error, registries declared twice" in _error(tmp_path, LIBRARY + LIBRARY)
    assert "members: Value error, 'Machida' is not a member id" in _error(
        tmp_path, '[members.Machida]\nname_ja = "町田市"\n' + LIBRARY
    )


def test_an_unreadable_or_malformed_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the registries file"):
        load_registries(tmp_path / "missing.toml")
    assert "not valid TOML" in _error(tmp_path, "[[registries]\nid = ")


def test_dsn_comes_from_the_named_environment_variable(tmp_path: Path) -> None:
    config = load_registries(_write(tmp_path, LIBRARY))
    (decl,) = config.registries
    assert isinstance(decl, SqlRegistry)
    with pytest.raises(ConfigurationError, match="dsn_env names LIBRARY_DSN, which is not set"):
        build_adapters(config, env={})
    url = f"sqlite:///{tmp_path / 'library.sqlite'}"
    assert resolve_dsn(decl, env={"LIBRARY_DSN": url}) == url
    adapters = build_adapters(config, env={"LIBRARY_DSN": url})
    adapter = adapters[ClientId.parse("JP/GOV/132098/library")]
    assert isinstance(adapter, SqlAdapter)
    try:
        with adapter.engine.connect() as conn:  # the change operation's idempotency table exists
            assert conn.execute(text("SELECT count(*) FROM adapters_idempotency")).scalar() == 0
        assert [d.code for d in adapter.services()] == ["card", "home-branch-change"]
    finally:
        adapter.engine.dispose()


def test_only_the_registries_asked_for_are_built(tmp_path: Path) -> None:
    config = load_registries(_write(tmp_path, LIBRARY))
    assert build_adapters(config, [ClientId.parse("JP/GOV/132098/water")], env={}) == {}


CREDENTIALS = """
[[registries]]
id = "JP/GOV/132098/parking-permits"
kind = "http"
base_url = "{upstream}"
header_env = { X-Api-Key = "PERMITS_API_KEY" }
bearer_token_env = "PERMITS_TOKEN"

[[registries.services]]
code = "person"
description = "The permit holder"
purposes = ["parking"]
path = "/credentials/{subject}"

[registries.services.fields]
name = "string"
address = "string"
birth_date = "date"
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with upstream_server.running() as url:
        yield url


@pytest.mark.integration
def test_upstream_credentials_come_from_the_named_environment_variables(
    tmp_path: Path, upstream: str
) -> None:
    config = load_registries(_write(tmp_path, CREDENTIALS.replace("{upstream}", upstream)))
    with pytest.raises(ConfigurationError, match=r"header_env\.X-Api-Key names PERMITS_API_KEY"):
        build_adapters(config, env={"PERMITS_TOKEN": "t0ken"})
    adapters = build_adapters(config, env={"PERMITS_TOKEN": "t0ken", "PERMITS_API_KEY": "k3y"})
    adapter = adapters[ClientId.parse("JP/GOV/132098/parking-permits")]
    assert isinstance(adapter, HttpAdapter)

    async def go() -> AdapterResponse:
        try:
            return await adapter.call(
                AdapterRequest(
                    service=ServiceId.parse("JP/GOV/132098/parking-permits/person"),
                    client=ClientId.parse("JP/GOV/132098/water"),
                    method="GET",
                    path="",
                    query="",
                    subject="P1",
                    purpose="parking",
                    message_id="m-1",
                    fields=frozenset({"name", "address"}),
                )
            )
        finally:
            await adapter.aclose()

    assert asyncio.run(go()).data == {"name": "k3y", "address": "Bearer t0ken"}


def test_a_secret_header_in_the_file_is_refused(tmp_path: Path) -> None:
    body = CREDENTIALS.replace(
        'header_env = { X-Api-Key = "PERMITS_API_KEY" }', 'headers = { X-Api-Key = "k3y" }'
    )
    detail = _error(tmp_path, body)
    assert "registries[0].headers: Value error, ['X-Api-Key'] would put a secret" in detail
    assert "k3y" not in detail


def test_every_reference_right_names_a_declared_client_and_service() -> None:
    from adapters.reference.rights import ONE_STOP, REFERENCE_RIGHTS

    config = reference_config()
    clients = {r.id for r in config.registries} | {str(ONE_STOP)}
    services = {str(sid) for sid, _, _ in declared_services(config)}
    for right in REFERENCE_RIGHTS:
        assert right.client in clients
        assert right.service in services


_EVENT = """
[[registries.events]]
code = "branch-changed"
version = "v1"
description = "The card moved to another branch"
purposes = ["library-services"]
published_by = "home-branch-change"
fields = ["home_branch"]
"""


def test_a_change_event_is_declared_as_a_service_of_its_change(tmp_path: Path) -> None:
    config = load_registries(_write(tmp_path, LIBRARY + _EVENT))
    found = {str(sid): desc for sid, desc, _ in declared_services(config)}
    event = found["JP/GOV/132098/library/branch-changed/v1"]
    assert event.event_of == "JP/GOV/132098/library/home-branch-change/v1"
    assert event.fields == ("home_branch",)
    assert not event.changes
    _, _, doc = next(d for d in declared_services(config) if d[1].event_of)
    assert set(doc["paths"]) == {
        "/r1/JP/GOV/132098/library/branch-changed/v1",
        "/r1/JP/GOV/132098/library/branch-changed/v1/subscriptions/{id}",
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('published_by = "home-branch-change"', 'published_by = "card"'), "no change service"),
        (('fields = ["home_branch"]', 'fields = ["card_number"]'), "fields the change sets"),
        (('code = "branch-changed"', 'code = "card"'), "declared twice"),
    ],
)
def test_a_bad_change_event_is_refused(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    detail = _error(tmp_path, LIBRARY + _EVENT.replace(old, new, 1))
    assert message in detail
