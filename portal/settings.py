"""Settings of the portal run on its own (``onceonly portal``): where the services are, the log
keys it pins, its session secret. It opens no database and reads no other component's files.

Read from ``ONCEONLY_PORTAL_*`` environment variables and, optionally, a TOML file
(``--config``/``ONCEONLY_PORTAL_CONFIG``); the environment wins over the file. Example::

    consent_url = "https://central.example"        # the consent service's citizen API
    desk_url = "https://one-stop.example"          # optional: the one-stop desk
    public_origin = "https://portal.example"       # POSTs from any other origin are refused
    oidc_issuer = "https://idp.example"            # sign-in at this OpenID Connect provider
    jwt_audience = "https://api.onceonly.example"  # the access tokens' audience (the services)
    jwt_citizen_claim = "citizen_id"               # the claim with the citizen id
    jwt_role_map = { "onceonly-auditor" = "auditor" }

    [signin]                                       # the portal's client at the provider
    client_id = "onceonly-portal"
    client_secret_file = "/etc/onceonly/portal-client-secret"

    consent_log_key = "onceonly.example/consent-service/audit+…"   # onceonly audit key consent-service

    [[nodes]]
    member = "JP/GOV/132098"
    url = "https://node.machida.example"
    log_key = "onceonly.example/JP/GOV/132098/audit+1a2b3c4d+AbC…"   # onceonly audit key
    # log_key_file = "/etc/onceonly/JP_GOV_132098.vkey"             # or: that key, in a file

Trust assumption: the operator writes these; the log keys are pinned here, so a node cannot
swap the key its checkpoints are verified with. The session secret comes from the environment or
a file, never a command-line argument (argument lists are visible to every local user).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from audit.checkpoint import NoteError, NoteVerifier
from exchange.errors import ConfigurationError
from exchange.settings import TokenIssuer

__all__ = [
    "DemoCitizen",
    "NodeSettings",
    "PortalSettings",
    "SignInSettings",
    "load_portal_settings",
]

MIN_SECRET_BYTES = 16


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class NodeSettings(BaseModel):
    """One node whose access log the portal shows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    member: str = Field(min_length=1)
    url: str
    log_key: str
    """The log's note verifier key (``onceonly audit key MEMBER``)."""
    log_key_file: Path | None = None
    """Instead of ``log_key``: a file holding it (what the node's operator saved from
    ``onceonly audit key MEMBER``), read once, at start."""

    _check_url = field_validator("url")(_http_url)

    @model_validator(mode="before")
    @classmethod
    def _key_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("log_key_file") is None:
            return data
        if data.get("log_key") is not None:
            raise ValueError("give log_key or log_key_file, not both")
        path = Path(data["log_key_file"])
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read log_key_file {path} ({exc.strerror})") from None
        return {**data, "log_key": key}

    @field_validator("log_key")
    @classmethod
    def _parse_key(cls, value: str) -> str:
        try:
            NoteVerifier.from_vkey(value)
        except (ConfigurationError, NoteError) as exc:
            raise ValueError(f"not a log verifier key ({exc.detail})") from exc
        return value

    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_vkey(self.log_key)


class SignInSettings(BaseModel):
    """The portal's client at the OpenID Connect provider (``[signin]`` of the file, or
    ``ONCEONLY_PORTAL_SIGNIN__CLIENT_ID`` and so on)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    """A confidential client's secret (``client_secret_basic``); neither: a public client,
    bound by PKCE alone."""
    scopes: list[str] = ["openid"]
    resource: str | None = None
    """RFC 8707 resource indicator sent with the request: the services' API at the provider."""
    id_token_algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    """The ID tokens' ``alg``, pinned for this provider."""
    redirect_uri: str | None = None
    """Default: ``{public_origin}/signin/callback`` (register it at the provider)."""
    post_logout_redirect_uri: str | None = None
    """Default: ``{public_origin}/signin`` (register it at the provider)."""

    @field_validator("redirect_uri", "post_logout_redirect_uri")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    def secret(self) -> SecretStr | None:
        if self.client_secret is not None:
            return self.client_secret
        if self.client_secret_file is None:
            return None
        try:
            value = self.client_secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the client secret file {exc}") from exc
        if not value:
            raise ConfigurationError("the client secret file is empty")
        return SecretStr(value)


class DemoCitizen(BaseModel):
    """A person offered on the development sign-in page."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str = Field(min_length=1)
    name: str = Field(min_length=1)


class PortalSettings(BaseSettings, TokenIssuer):
    model_config = SettingsConfigDict(
        env_prefix="ONCEONLY_PORTAL_", extra="forbid", env_nested_delimiter="__"
    )

    consent_url: str
    """Base URL of the consent service (the central server), without ``/consent/v1``."""
    consent_log_key: str | None = None
    """The consent log's note verifier key (``onceonly audit key consent-service``): pinned, it
    turns on the citizen's consent history page (``/consent/v1/log``), each entry verified."""
    nodes: list[NodeSettings] = Field(min_length=1)
    desk_url: str | None = None
    """Base URL of the one-stop desk (its ``/procedures`` API); unset hides procedures."""
    public_origin: str | None = None
    """The origin citizens reach the portal at; a POST from another ``Origin`` is refused."""
    secret: SecretStr | None = None
    secret_file: Path | None = None
    """Signs session cookies: ``ONCEONLY_PORTAL_SECRET`` or a file holding it (one is needed)."""
    signin: SignInSettings | None = None
    """Sign-in at the OpenID Connect provider ``oidc_issuer`` (the token settings of
    ``exchange.settings.TokenIssuer`` say how its access tokens are verified)."""
    session_lifetime_s: int = Field(default=3600, ge=60, le=12 * 3600)
    """A session ends this long after sign-in, whatever its token says."""
    reauth_max_age_s: int = Field(default=300, ge=0, le=3600)
    """Granting a consent needs an authentication at most this old (else: sign in again)."""
    dev_issuer_key_file: Path | None = None
    """The development issuer's key: the demo's sign-in mints tokens with it. Needs
    ``allow_dev_issuer``."""
    allow_dev_issuer: bool = False
    """The explicit development flag: without it, ``dev_issuer_key_file`` is refused."""
    token_public_key_file: Path | None = None
    """A real issuer's PEM public key, when sign-in happens elsewhere (no development sign-in)."""
    demo_citizens: list[DemoCitizen] = []
    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=1, le=65535)
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    _check_consent = field_validator("consent_url")(_http_url)

    @field_validator("consent_log_key")
    @classmethod
    def _parse_consent_log_key(cls, value: str | None) -> str | None:
        return None if value is None else NodeSettings._parse_key(value)

    def consent_log_verifier(self) -> NoteVerifier | None:
        return (
            None if self.consent_log_key is None else NoteVerifier.from_vkey(self.consent_log_key)
        )

    @field_validator("desk_url", "public_origin")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @property
    def portal_secret(self) -> SecretStr:
        """The session secret (``portal.app.PortalSecret``); an error if none is configured."""
        if self.secret is not None:
            value = self.secret.get_secret_value()
        elif self.secret_file is not None:
            try:
                value = self.secret_file.read_text().strip()
            except OSError as exc:
                raise ConfigurationError(f"cannot read the portal secret file {exc}") from exc
        else:
            raise ConfigurationError(
                "set ONCEONLY_PORTAL_SECRET or ONCEONLY_PORTAL_SECRET_FILE (the session secret)"
            )
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(f"the portal secret must be at least {MIN_SECRET_BYTES} bytes")
        return SecretStr(value)


def load_portal_settings(config: Path | None = None, **overrides: Any) -> PortalSettings:
    """The settings from the environment over ``config`` (TOML), with ``overrides`` (CLI options
    that are not ``None``) on top. Any problem is one ``ConfigurationError`` line."""
    if config is not None and not config.is_file():
        raise ConfigurationError(f"no portal config file at {config}")

    class _FromFile(PortalSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config is not None:
                sources += (TomlConfigSettingsSource(settings_cls, toml_file=config),)
            return sources

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        loaded = _FromFile(**given)
    except ValidationError as exc:
        raise ConfigurationError(f"portal settings: {_first_error(exc)}") from None
    except ValueError as exc:  # a TOML syntax error
        raise ConfigurationError(f"portal config {config}: {exc}") from None
    settings: PortalSettings = loaded
    settings.portal_secret  # noqa: B018 (fail at start, not at the first request)
    _check_issuers(settings)
    return settings


def _check_issuers(settings: PortalSettings) -> None:
    """Exactly one way to sign in; the development issuer only with its explicit flag."""
    if settings.dev_issuer_key_file is not None:
        if not settings.allow_dev_issuer:
            raise ConfigurationError(
                "dev_issuer_key_file is the demo's sign-in: it needs allow_dev_issuer = true "
                "(development only; real sign-in is [signin] with oidc_issuer)"
            )
        if settings.oidc_issuer is not None or settings.signin is not None:
            raise ConfigurationError(
                "configure one sign-in: the development issuer or the OpenID Connect provider"
            )
    elif settings.allow_dev_issuer:
        raise ConfigurationError("allow_dev_issuer is set but dev_issuer_key_file is not")
    if settings.signin is not None:
        if settings.oidc_issuer is None:
            raise ConfigurationError("[signin] needs oidc_issuer (the provider's issuer URL)")
        if settings.public_origin is None and settings.signin.redirect_uri is None:
            raise ConfigurationError("[signin] needs public_origin (or signin.redirect_uri)")
        settings.signin.secret()  # a missing secret file fails at start
    if settings.oidc_issuer is not None and settings.token_public_key_file is not None:
        raise ConfigurationError("configure one token issuer: oidc_issuer or token_public_key_file")
    if (
        settings.dev_issuer_key_file is None
        and settings.token_public_key_file is None
        and settings.oidc_issuer is None
    ):
        raise ConfigurationError(
            "set oidc_issuer with [signin] (sign-in at your identity provider), "
            "token_public_key_file, or dev_issuer_key_file with allow_dev_issuer (the demo's)"
        )


def _first_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    return f"{where}: {first.get('msg', 'invalid')}"
