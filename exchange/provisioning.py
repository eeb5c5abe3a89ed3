"""Key and certificate provisioning (``onceonly keys …``): run time only, into the data directory.

* ``init_instance``: the instance CA, the central server's signing key and the trust anchor (the
  central public key every node pins). Idempotent: existing keys are kept, never overwritten.
* ``provision_subsystem``: a subsystem's signing key and its certificate, issued by the CA, in
  one data directory (the demo, or an operator who runs central and nodes together).
* Organisations apart from the central operator (issue #13, "one organisation, one node"):
  ``join_instance`` pins the instance and the trust anchor in the organisation's own data
  directory; ``request_subsystem`` makes the subsystem's key there and a certificate request
  (PKCS#10) — the private key never leaves; the central operator's ``sign_request`` checks the
  request and issues the certificate with the CA; ``install_certificate`` puts it beside the key
  after checking that it certifies that key.
* ``provision_sealing_key``: a subsystem's X25519 sealing key (made once, never replaced), whose
  public half the registry publishes so the pseudonym translator can seal the subsystem's codes.
* ``provision_translator_key``: the central pseudonym translator's token signing key.
* ``issue_api_key``: a departmental system's API key for its node, shown once, stored hashed.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, delete, insert

from exchange.certificates import (
    certificate_info,
    certificate_pem,
    certificate_request,
    certificate_request_pem,
    create_ca,
    issue_member_certificate,
    load_certificate,
    load_certificate_request,
    public_key_of,
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
    public_key_from_pem,
    public_key_pem,
    save_private_key,
)
from exchange.store import ClientKeyRow

__all__ = [
    "API_KEY_BYTES",
    "init_instance",
    "install_certificate",
    "issue_api_key",
    "join_instance",
    "provision_sealing_key",
    "provision_subsystem",
    "provision_translator_key",
    "request_subsystem",
    "revoke_api_keys",
    "sign_request",
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
    public = SealingKey.load(path).public_key
    keys.subsystem_seal_public(subsystem).write_text(f"{public}\n")
    return public


def provision_translator_key(keys: KeyStore) -> str:
    """The translator's token signing public key (PEM), making the key the first time only."""
    keys.instance()  # the instance must exist
    if not keys.translator_key.exists():
        save_private_key(generate_private_key("EdDSA"), keys.translator_key)
    return public_key_pem(load_private_key(keys.translator_key).public_key())


def join_instance(keys: KeyStore, instance: str, anchor_pem: str) -> bool:
    """Pin ``instance`` and the central server's public key (the trust anchor, handed over out
    of band) in an organisation's own data directory; True if anything was written. Refuses to
    replace a different instance or anchor: a node never silently re-pins its trust."""
    parse_part(instance, "instance")
    public_key_from_pem(anchor_pem)  # refuses anything but a public key
    if keys.instance_file.exists() and keys.instance() != instance:
        raise ConfigurationError(f"{keys.root} already holds instance {keys.instance()}")
    if keys.anchor.exists() and keys.anchor.read_text().strip() != anchor_pem.strip():
        raise ConfigurationError(f"{keys.anchor} already pins another central key")
    if keys.instance_file.exists() and keys.anchor.exists():
        return False
    keys.root.mkdir(parents=True, exist_ok=True)
    keys.anchor.write_text(anchor_pem.strip() + "\n")
    keys.instance_file.write_text(json.dumps({"instance": instance}) + "\n")
    return True


def request_subsystem(keys: KeyStore, subsystem: ClientId, *, alg: Algorithm = "EdDSA") -> Path:
    """Make the subsystem's key (kept if present) and write its certificate request beside it;
    returns the request's path. The private key never leaves the data directory. The subsystem's
    sealing key is made here too (``provision_sealing_key``): its public half goes to the central
    operator with the request."""
    if keys.instance() != subsystem.member.instance:
        raise ConfigurationError("subsystem belongs to another instance")
    key_path = keys.subsystem_key(subsystem)
    if key_path.exists():
        key = load_private_key(key_path)
    else:
        key = generate_private_key(alg)
        save_private_key(key, key_path)
    csr_path = key_path.with_suffix(".csr")
    csr_path.write_text(certificate_request_pem(certificate_request(key, subsystem)))
    provision_sealing_key(keys, subsystem)
    return csr_path


def sign_request(keys: KeyStore, request_pem: str, *, now: datetime) -> tuple[ClientId, str]:
    """The central operator issues a certificate for a request whose signature checks; returns
    the subsystem it names and the certificate (PEM). Registering it is a separate, deliberate
    step (``registry add-subsystem --cert``)."""
    subsystem, public_key = load_certificate_request(request_pem)
    if keys.instance() != subsystem.member.instance:
        raise ConfigurationError(f"{subsystem} belongs to another instance")
    ca_key = load_private_key(keys.ca_key)
    ca_cert = load_certificate(keys.ca_cert.read_text())
    cert = issue_member_certificate(ca_key, ca_cert, subsystem, public_key, now=now)
    return subsystem, certificate_pem(cert)


def install_certificate(keys: KeyStore, cert_pem: str) -> ClientId:
    """Put a CA-issued certificate beside the key it certifies (refused for any other key)."""
    cert = load_certificate(cert_pem)
    info = certificate_info(cert)
    subsystem = ClientId.parse(info.subject)
    key_path = keys.subsystem_key(subsystem)
    if not key_path.exists():
        raise ConfigurationError(f"no key for {subsystem} in {keys.root}: run `keys request` first")
    if public_key_pem(public_key_of(cert)) != public_key_pem(
        load_private_key(key_path).public_key()
    ):
        raise ConfigurationError(f"the certificate does not certify the key of {subsystem}")
    keys.subsystem_cert(subsystem).write_text(cert_pem)
    return subsystem


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
