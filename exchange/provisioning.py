"""Key and certificate provisioning (``onceonly keys …``): run time only, into the data directory.

* ``init_instance``: the instance CA, the central server's signing key and the trust anchor (the
  central public key every node pins). Idempotent: existing keys are kept, never overwritten.
* ``provision_subsystem``: a subsystem's signing key and its certificate, issued by the CA.
* ``provision_sealing_key``: a subsystem's X25519 sealing key (made once, never replaced), whose
  public half the registry publishes so the pseudonym translator can seal the subsystem's codes.
* ``provision_translator_key``: the central pseudonym translator's token signing key.
* ``issue_api_key``: a departmental system's API key for its node, shown once, stored hashed.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime

from sqlalchemy import Engine, delete, insert

from exchange.certificates import (
    certificate_pem,
    create_ca,
    issue_member_certificate,
    load_certificate,
)
from exchange.errors import ConfigurationError
from exchange.identifiers import ClientId, parse_part
from exchange.keystore import KeyStore
from exchange.node.consumer import hash_api_key
from exchange.sealing import SealingKey, SealingPublicKey
from exchange.signing import (
    Algorithm,
    generate_private_key,
    load_private_key,
    public_key_pem,
    save_private_key,
)
from exchange.store import ClientKeyRow

__all__ = [
    "API_KEY_BYTES",
    "init_instance",
    "issue_api_key",
    "provision_sealing_key",
    "provision_subsystem",
    "provision_translator_key",
    "revoke_api_keys",
]

API_KEY_BYTES = 32


def init_instance(keys: KeyStore, instance: str, *, now: datetime) -> bool:
    """Create the CA, the central key and the anchor if missing; True if anything was created."""
    parse_part(instance, "instance")
    if keys.instance_file.exists():
        if keys.instance() != instance:
            raise ConfigurationError(f"{keys.root} already holds instance {keys.instance()}")
        return False
    keys.root.mkdir(parents=True, exist_ok=True)
    ca_key = generate_private_key("EdDSA")
    save_private_key(ca_key, keys.ca_key)
    keys.ca_cert.write_text(certificate_pem(create_ca(ca_key, instance, now=now)))
    central = generate_private_key("EdDSA")
    save_private_key(central, keys.central_key)
    keys.anchor.write_text(public_key_pem(central.public_key()))
    keys.instance_file.write_text(json.dumps({"instance": instance}) + "\n")
    return True


def provision_subsystem(
    keys: KeyStore, subsystem: ClientId, *, now: datetime, alg: Algorithm = "EdDSA"
) -> str:
    """Make (or keep) the subsystem's key and return its CA-issued certificate (PEM)."""
    if keys.instance() != subsystem.member.instance:
        raise ConfigurationError("subsystem belongs to another instance")
    key_path = keys.subsystem_key(subsystem)
    cert_path = keys.subsystem_cert(subsystem)
    if key_path.exists() and cert_path.exists():
        return cert_path.read_text()
    key = load_private_key(key_path) if key_path.exists() else generate_private_key(alg)
    if not key_path.exists():
        save_private_key(key, key_path)
    ca_key = load_private_key(keys.ca_key)
    ca_cert = load_certificate(keys.ca_cert.read_text())
    pem = certificate_pem(
        issue_member_certificate(ca_key, ca_cert, subsystem, key.public_key(), now=now)
    )
    cert_path.write_text(pem)
    return pem


def provision_sealing_key(keys: KeyStore, subsystem: ClientId) -> SealingPublicKey:
    """The subsystem's sealing public key, making the key pair the first time only."""
    if keys.instance() != subsystem.member.instance:
        raise ConfigurationError("subsystem belongs to another instance")
    path = keys.subsystem_seal_key(subsystem)
    if not path.exists():
        SealingKey.generate().save(path)
    return SealingKey.load(path).public_key


def provision_translator_key(keys: KeyStore) -> str:
    """The translator's token signing public key (PEM), making the key the first time only."""
    keys.instance()  # the instance must exist
    if not keys.translator_key.exists():
        save_private_key(generate_private_key("EdDSA"), keys.translator_key)
    return public_key_pem(load_private_key(keys.translator_key).public_key())


def issue_api_key(engine: Engine, *, node: str, client: ClientId, now: datetime) -> str:
    key = "oo_" + secrets.token_urlsafe(API_KEY_BYTES)
    with engine.begin() as conn:
        conn.execute(
            insert(ClientKeyRow).values(
                key_hash=hash_api_key(key), node=node, client_id=str(client), created_at=now
            )
        )
    return key


def revoke_api_keys(engine: Engine, *, node: str, client: ClientId) -> int:
    """Delete every API key of ``client`` at ``node``; returns how many there were.

    A running node trusts a key it verified for ``API_KEY_CACHE_TTL_S`` (5 s) more at most."""
    with engine.begin() as conn:
        result = conn.execute(
            delete(ClientKeyRow).where(
                ClientKeyRow.node == node, ClientKeyRow.client_id == str(client)
            )
        )
    return int(result.rowcount or 0)
