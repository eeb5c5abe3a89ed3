"""The instance CA and member signing certificates (X.509), DESIGN "Trust".

``onceonly keys init`` creates the instance CA (self-signed, Ed25519) and the central server's
signing key; ``onceonly keys member`` makes a subsystem's signing key and a certificate issued by
the CA. Nodes trust a member key only through a certificate that (1) chains to the CA named in the
verified registry, (2) is within its validity window at ``now``, (3) is not listed as revoked and
(4) names the subsystem that signs. Allowed to import ``cryptography`` (style rule 14).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from exchange.errors import ClientError, VerificationError
from exchange.identifiers import ClientId
from exchange.signing import PrivateKey, PublicKey

__all__ = [
    "DEFAULT_CA_VALIDITY",
    "DEFAULT_MEMBER_VALIDITY",
    "CertificateInfo",
    "certificate_info",
    "certificate_pem",
    "certificate_request",
    "certificate_request_pem",
    "create_ca",
    "issue_member_certificate",
    "load_certificate",
    "load_certificate_request",
    "public_key_of",
    "verify_member_certificate",
]

DEFAULT_CA_VALIDITY = dt.timedelta(days=3650)
DEFAULT_MEMBER_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    subject: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str


def _sign_alg(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def create_ca(key: PrivateKey, instance: str, *, now: dt.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"onceonly {instance} instance CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, instance),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + DEFAULT_CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, _sign_alg(key))
    )


def issue_member_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    subsystem: ClientId,
    public_key: PublicKey,
    *,
    now: dt.datetime,
    validity: dt.timedelta = DEFAULT_MEMBER_VALIDITY,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, str(subsystem)),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(subsystem.member)),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, _sign_alg(ca_key))
    )


def certificate_request(key: PrivateKey, subsystem: ClientId) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``subsystem``'s certificate, signed by the key it certifies: the
    organisation keeps its private key and sends only this to the central operator."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, str(subsystem)),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(subsystem.member)),
        ]
    )
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, _sign_alg(key))


def certificate_request_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_certificate_request(pem: str) -> tuple[ClientId, PublicKey]:
    """The subsystem a request names and its public key, once the request's own signature (proof
    that its sender holds the private key) checks; ``VerificationError`` otherwise."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except ValueError as exc:
        raise VerificationError("unreadable certificate request") from exc
    if not csr.is_signature_valid:
        raise VerificationError("certificate request not signed by its own key")
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cn) != 1:
        raise VerificationError("certificate request names no subsystem")
    try:
        subsystem = ClientId.parse(str(cn[0].value))
    except ClientError as exc:
        raise VerificationError("certificate request names no valid subsystem") from exc
    key = csr.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise VerificationError("unsupported key in certificate request")
    return subsystem, key


def public_key_of(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise VerificationError("unsupported member key")
    return key


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_certificate(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError as exc:
        raise VerificationError("unreadable certificate") from exc


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        subject=str(cn[0].value) if cn else "",
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
    )


def verify_member_certificate(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    subsystem: ClientId,
    revoked_serials: frozenset[str],
    now: dt.datetime,
) -> PublicKey:
    """Return the member's public key, or raise ``VerificationError`` (steps 4a–4d of protocol.md)."""
    # (4a) chains to the instance CA: stops a key minted by anyone but the CA.
    ca_key = ca_cert.public_key()
    try:
        if isinstance(ca_key, ed25519.Ed25519PublicKey):
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes)
        elif isinstance(ca_key, ec.EllipticCurvePublicKey):
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
        else:
            raise VerificationError("unsupported CA key")
    except InvalidSignature as exc:
        raise VerificationError("certificate not issued by the instance CA") from exc
    if cert.issuer != ca_cert.subject:
        raise VerificationError("certificate not issued by the instance CA")
    # (4b) validity window: stops use of an expired or not-yet-valid key.
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VerificationError("certificate outside its validity period")
    # (4c) revocation: stops a compromised key the central server has revoked.
    if format(cert.serial_number, "x") in revoked_serials:
        raise VerificationError("certificate revoked")
    # (4d) names the subsystem that signs: stops member A signing as member B.
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn or cn[0].value != str(subsystem):
        raise VerificationError("certificate issued to another subsystem")
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise VerificationError("unsupported member key")
    return key
