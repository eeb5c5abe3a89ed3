"""One organisation, one data directory: keys made where they are used, certificates by request.

The organisation's private key never leaves its data directory; the central operator sees only a
certificate request whose signature proves possession, and the certificate it issues installs
only beside the key it certifies.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.certificates import load_certificate, verify_member_certificate
from exchange.errors import ConfigurationError, VerificationError
from exchange.identifiers import ClientId
from exchange.keystore import KeyStore
from exchange.provisioning import (
    init_instance,
    install_certificate,
    join_instance,
    request_subsystem,
    sign_request,
)
from exchange.sealing import SealingKey, SealingPublicKey

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
RESIDENTS = ClientId.parse("JP/GOV/132098/resident-registry")
TAX = ClientId.parse("JP/GOV/132098/municipal-tax")


@pytest.fixture
def central(tmp_path: Path) -> KeyStore:
    keys = KeyStore(tmp_path / "central")
    init_instance(keys, "JP", now=NOW)
    return keys


@pytest.fixture
def machida(tmp_path: Path, central: KeyStore) -> KeyStore:
    keys = KeyStore(tmp_path / "machida")
    assert join_instance(keys, "JP", central.anchor.read_text())
    return keys


def test_request_signed_and_installed_without_the_key_leaving(
    central: KeyStore, machida: KeyStore
) -> None:
    csr = request_subsystem(machida, RESIDENTS)
    assert "PRIVATE" not in csr.read_text()
    subsystem, pem = sign_request(central, csr.read_text(), now=NOW)
    assert subsystem == RESIDENTS
    assert install_certificate(machida, pem) == RESIDENTS
    assert machida.subsystem_cert(RESIDENTS).read_text() == pem
    assert not central.subsystem_key(RESIDENTS).exists()  # the central side never held it
    verify_member_certificate(
        load_certificate(pem),
        load_certificate(central.ca_cert.read_text()),
        subsystem=RESIDENTS,
        revoked_serials=frozenset(),
        now=NOW,
    )
    assert machida.hosted_subsystems(RESIDENTS.member) == [RESIDENTS]


def test_request_again_keeps_the_key(machida: KeyStore) -> None:
    request_subsystem(machida, RESIDENTS)
    key = machida.subsystem_key(RESIDENTS).read_bytes()
    request_subsystem(machida, RESIDENTS)
    assert machida.subsystem_key(RESIDENTS).read_bytes() == key


def test_tampered_request_is_refused(central: KeyStore, machida: KeyStore) -> None:
    text = request_subsystem(machida, RESIDENTS).read_text()
    body = text.splitlines()
    middle = len(body) // 2
    line = body[middle]
    body[middle] = line[:10] + ("A" if line[10] != "A" else "B") + line[11:]
    with pytest.raises(VerificationError):
        sign_request(central, "\n".join(body) + "\n", now=NOW)


def test_certificate_for_another_key_is_not_installed(
    central: KeyStore, machida: KeyStore, tmp_path: Path
) -> None:
    other = KeyStore(tmp_path / "other")
    join_instance(other, "JP", central.anchor.read_text())
    _, pem = sign_request(central, request_subsystem(other, RESIDENTS).read_text(), now=NOW)
    request_subsystem(machida, RESIDENTS)
    with pytest.raises(ConfigurationError, match="does not certify"):
        install_certificate(machida, pem)
    assert not machida.subsystem_cert(RESIDENTS).exists()


def test_certificate_without_its_key_is_not_installed(
    central: KeyStore, machida: KeyStore, tmp_path: Path
) -> None:
    other = KeyStore(tmp_path / "other")
    join_instance(other, "JP", central.anchor.read_text())
    _, pem = sign_request(central, request_subsystem(other, TAX).read_text(), now=NOW)
    with pytest.raises(ConfigurationError, match="no key"):
        install_certificate(machida, pem)


def test_join_never_repins_another_anchor(
    central: KeyStore, machida: KeyStore, tmp_path: Path
) -> None:
    rival = KeyStore(tmp_path / "rival")
    init_instance(rival, "JP", now=NOW)
    with pytest.raises(ConfigurationError, match="another central key"):
        join_instance(machida, "JP", rival.anchor.read_text())
    assert machida.anchor.read_text() == central.anchor.read_text().strip() + "\n"
    assert not join_instance(machida, "JP", central.anchor.read_text())


def test_join_refuses_what_is_not_a_public_key(tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        join_instance(KeyStore(tmp_path / "x"), "JP", "not a key")
    assert not (tmp_path / "x" / "anchor.pem").exists()


def test_request_of_another_instance_is_refused(central: KeyStore, machida: KeyStore) -> None:
    with pytest.raises(ConfigurationError, match="another instance"):
        request_subsystem(machida, ClientId.parse("EE/GOV/70000591/population"))


def test_request_makes_the_sealing_key_once_with_its_public_half(machida: KeyStore) -> None:
    request_subsystem(machida, RESIDENTS)
    public = machida.subsystem_seal_public(RESIDENTS).read_text().strip()
    key = SealingKey.load(machida.subsystem_seal_key(RESIDENTS))
    assert SealingPublicKey.parse(public) == key.public_key
    request_subsystem(machida, RESIDENTS)
    assert SealingKey.load(machida.subsystem_seal_key(RESIDENTS)).public_key == key.public_key
    assert machida.hosted_subsystems(RESIDENTS.member) == [RESIDENTS]


def test_a_private_key_file_is_never_replaced(tmp_path: Path) -> None:
    from exchange.signing import generate_private_key, save_private_key

    path = tmp_path / "k.key"
    save_private_key(generate_private_key("EdDSA"), path)
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="never replaced"):
        save_private_key(generate_private_key("EdDSA"), path)
    assert path.read_bytes() == before
    assert path.stat().st_mode & 0o777 == 0o600
