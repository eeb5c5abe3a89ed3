"""Hostile tokens against ``exchange.tokens.TokenVerifier`` with a provider's key set
(``exchange.oidc.JwksKeys``) and against ``exchange.oidc.verify_id_token`` (issue 16): each
attack is a named case. The key set is served by an in-memory fetch (the JWKS document a provider
would serve), so the refetch bounds can be counted with a clock that is a parameter. The real
provider is exercised in tests/integration/test_oidc_signin.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from exchange.errors import AuthenticationError, ConfigurationError, UnavailableError
from exchange.oidc import JwksKeys, verify_id_token
from exchange.tokens import ClaimMapping, TokenVerifier

ISSUER = "https://idp.example"
AUDIENCE = "https://api.onceonly.example"
CLIENT = "onceonly-portal"
NOW = datetime.now(UTC).replace(microsecond=0)
LIFETIME_S = 6 * 3600
"""Good tokens' lifetime: PyJWT checks ``exp`` against the real clock too, and a loaded run may
reach these tests long after ``NOW`` was taken."""


class ProviderKeys:
    """What a provider publishes (``keys``) and signs with (``private``), by kid."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False

    def add(self, kid: str, *, alg: str | None = "RS256") -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private[kid] = key
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk |= {"kid": kid, "use": "sig"} | ({"alg": alg} if alg else {})
        self.published.insert(0, jwk)

    def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise UnavailableError("the identity provider cannot be reached")
        return {"keys": list(self.published)}

    def sign(self, claims: dict[str, Any], *, kid: str, **header: Any) -> str:
        head = {"kid": kid, "typ": "at+jwt"} | header
        return jwt.encode(claims, self.private[kid], algorithm="RS256", headers=head)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def claims(**over: Any) -> dict[str, Any]:
    now = int(NOW.timestamp())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "account-1",
        "iat": now,
        "exp": now + LIFETIME_S,
        "citizen_id": "citizen-0001",
        "roles": [],
    }
    return base | over


@pytest.fixture
def provider() -> ProviderKeys:
    keys = ProviderKeys()
    keys.add("k1")
    return keys


def verifier(provider: ProviderKeys, clock: Clock | None = None, **kw: Any) -> TokenVerifier:
    keys = JwksKeys(provider.fetch, min_refetch_s=10, clock=clock or Clock())
    return TokenVerifier(
        keys,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256"],
        token_type="at+jwt",
        claims=ClaimMapping(citizen_claim="citizen_id", role_map={"onceonly-auditor": "auditor"}),
        **kw,
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(provider: ProviderKeys) -> str:
    """Algorithm confusion: HMAC-SHA256 keyed with the provider's public key (PEM)."""
    pem = (
        provider.private["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": "k1"}).encode())
    body = b64(json.dumps(claims()).encode())
    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def unsigned() -> str:
    head = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": "k1"}).encode())
    return f"{head}.{b64(json.dumps(claims()).encode())}."


def es256_foreign() -> str:
    return jwt.encode(
        claims(), ec.generate_private_key(ec.SECP256R1()), "ES256", {"typ": "at+jwt", "kid": "k1"}
    )


HOSTILE: dict[str, Callable[[ProviderKeys], str]] = {
    "alg none": lambda p: unsigned(),
    "HS256 with the public key as the secret": hs256_with_public_key,
    "ES256 by a key that is not the provider's": lambda p: es256_foreign(),
    "another issuer": lambda p: p.sign(claims(iss="https://idp.elsewhere.example"), kid="k1"),
    "another audience": lambda p: p.sign(claims(aud="https://other.example"), kid="k1"),
    "expired": lambda p: p.sign(
        claims(iat=int(NOW.timestamp()) - 7200, exp=int(NOW.timestamp()) - 3600), kid="k1"
    ),
    "lifetime over twelve hours": lambda p: p.sign(
        claims(exp=int(NOW.timestamp()) + 13 * 3600), kid="k1"
    ),
    "an ID token (typ JWT)": lambda p: p.sign(claims(), kid="k1", typ="JWT"),
    "no typ": lambda p: jwt.encode(claims(), p.private["k1"], "RS256", {"kid": "k1"}),
    "unknown kid": lambda p: jwt.encode(
        claims(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "RS256",
        {"kid": "k-unknown", "typ": "at+jwt"},
    ),
    "no subject": lambda p: p.sign({k: v for k, v in claims().items() if k != "sub"}, kid="k1"),
    "citizen id of the wrong type": lambda p: p.sign(claims(citizen_id=["a", "b"]), kid="k1"),
    "signature of another token": lambda p: (
        p.sign(claims(), kid="k1").rsplit(".", 1)[0]
        + "."
        + p.sign(claims(sub="other"), kid="k1").rsplit(".", 1)[1]
    ),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_access_token_is_refused_with_one_opaque_error(
    provider: ProviderKeys, attack: str
) -> None:
    token = HOSTILE[attack](provider)
    with pytest.raises(AuthenticationError) as caught:
        verifier(provider).verify(token, now=NOW)
    assert caught.value.detail == "invalid token"


def test_a_good_access_token_maps_the_citizen_claim_and_the_roles(
    provider: ProviderKeys,
) -> None:
    v = verifier(provider)
    citizen = v.verify(provider.sign(claims(), kid="k1"), now=NOW)
    assert (citizen.subject, citizen.roles) == ("citizen-0001", frozenset({"citizen"}))
    no_citizen_id = {k: v for k, v in claims().items() if k != "citizen_id"}
    auditor = v.verify(
        provider.sign(no_citizen_id | {"roles": ["onceonly-auditor", "citizen"]}, kid="k1"),
        now=NOW,
    )
    # Only the citizen claim makes a citizen; unmapped role values count for nothing.
    assert (auditor.subject, auditor.roles) == ("account-1", frozenset({"auditor"}))
    typed = v.verify(provider.sign(claims(), kid="k1", typ="application/at+jwt"), now=NOW)
    assert typed.subject == "citizen-0001"


def test_a_key_published_for_another_alg_does_not_verify(provider: ProviderKeys) -> None:
    provider.add("k2", alg="RS384")
    with pytest.raises(AuthenticationError):
        verifier(provider).verify(provider.sign(claims(), kid="k2"), now=NOW)


def test_a_rotated_key_is_fetched_for_its_unknown_kid_at_most_once_per_interval(
    provider: ProviderKeys,
) -> None:
    clock = Clock()
    v = verifier(provider, clock)
    v.verify(provider.sign(claims(), kid="k1"), now=NOW)
    assert provider.fetches == 1
    provider.add("k2")  # the provider rotates: its new tokens name k2
    rotated = provider.sign(claims(), kid="k2")
    clock.t += 3  # within the interval: no fetch, so the new key is not known yet
    with pytest.raises(AuthenticationError):
        v.verify(rotated, now=NOW)
    assert provider.fetches == 1
    clock.t += 10
    assert v.verify(rotated, now=NOW).subject == "citizen-0001"
    assert provider.fetches == 2
    # A flood of invented kids: at most one fetch per interval.
    clock.t += 10
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(50):
        invented = jwt.encode(claims(), foreign, "RS256", {"kid": f"k-{i}", "typ": "at+jwt"})
        with pytest.raises(AuthenticationError):
            v.verify(invented, now=NOW)
    assert provider.fetches == 3
    assert v.verify(provider.sign(claims(), kid="k1"), now=NOW).subject == "citizen-0001"


def test_a_provider_down_at_start_is_unavailable_and_later_keeps_its_last_keys(
    provider: ProviderKeys,
) -> None:
    clock = Clock()
    v = verifier(provider, clock)
    provider.down = True
    with pytest.raises(UnavailableError):
        v.verify(provider.sign(claims(), kid="k1"), now=NOW)
    provider.down = False
    clock.t += 10
    assert v.verify(provider.sign(claims(), kid="k1"), now=NOW).subject == "citizen-0001"
    provider.down = True
    clock.t += 4000  # stale, and the provider cannot be reached: its last keys still verify
    assert v.verify(provider.sign(claims(), kid="k1"), now=NOW).subject == "citizen-0001"


@pytest.mark.parametrize("algorithms", [[], ["HS256"], ["none"], ["RS256", "HS512"]])
def test_pinning_no_algorithm_or_a_symmetric_one_is_a_configuration_error(
    provider: ProviderKeys, algorithms: list[str]
) -> None:
    with pytest.raises(ConfigurationError):
        TokenVerifier(
            JwksKeys(provider.fetch), issuer=ISSUER, audience=AUDIENCE, algorithms=algorithms
        )


def test_a_role_map_to_an_unknown_role_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        ClaimMapping(role_map={"admins": "superuser"})


def id_token(provider: ProviderKeys, **over: Any) -> str:
    base = claims(aud=CLIENT, nonce="n-123", auth_time=int(NOW.timestamp()) - 60) | over
    return jwt.encode(
        {k: v for k, v in base.items() if v is not None},
        provider.private["k1"],
        "RS256",
        {"kid": "k1"},
    )


def check_id_token(provider: ProviderKeys, token: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT,
        "algorithms": ["RS256"],
        "nonce": "n-123",
        "now": NOW,
    } | kw
    return verify_id_token(token, JwksKeys(provider.fetch), **args)


ID_TOKEN_ATTACKS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "another nonce (injected from another session)": ({"nonce": "n-other"}, {}),
    "no nonce": ({"nonce": None}, {}),
    "issued to another client": ({"aud": "another-client"}, {}),
    "several audiences, azp another client": (
        {"aud": [CLIENT, "another-client"], "azp": "another-client"},
        {},
    ),
    "another issuer": ({"iss": "https://idp.elsewhere.example"}, {}),
    "expired": ({"exp": int(NOW.timestamp()) - 3600, "iat": int(NOW.timestamp()) - 4000}, {}),
    "authenticated before the re-authentication was asked": (
        {},
        {"auth_after": NOW - timedelta(seconds=5)},
    ),
    "no auth_time when re-authentication was asked": (
        {"auth_time": None},
        {"auth_after": NOW - timedelta(seconds=5)},
    ),
}


@pytest.mark.parametrize("attack", sorted(ID_TOKEN_ATTACKS))
def test_hostile_id_token_is_refused(provider: ProviderKeys, attack: str) -> None:
    token_over, check_over = ID_TOKEN_ATTACKS[attack]
    with pytest.raises(AuthenticationError):
        check_id_token(provider, id_token(provider, **token_over), **check_over)


def test_a_good_id_token_gives_its_subject_and_auth_time(provider: ProviderKeys) -> None:
    checked = check_id_token(provider, id_token(provider))
    assert checked.subject == "account-1"
    assert checked.auth_time == int(NOW.timestamp()) - 60
    fresh = id_token(provider, auth_time=int(NOW.timestamp()))
    assert check_id_token(provider, fresh, auth_after=NOW).auth_time == int(NOW.timestamp())
