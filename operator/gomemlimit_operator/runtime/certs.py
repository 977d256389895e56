"""A self-signed CA and a webhook serving certificate, made with ``cryptography``.

kopf's own generator needs oscrypto, which fails on OpenSSL 3; this module replaces it.
Used by ``--dev`` and by tests; production certificates come from a Secret or cert-manager.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_SERVICE",
    "CertificateBundle",
    "CertificateFiles",
    "default_hosts",
    "generate",
    "service_dns_names",
    "write_files",
]

DEFAULT_SERVICE: Final = "gomemlimit-operator"
_CLOCK_SKEW: Final = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertificateBundle:
    """PEM bytes: the CA certificate (the caBundle), the serving certificate and its key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertificateFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names under which the API server may reach a Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def default_hosts(namespace: str, service: str = DEFAULT_SERVICE) -> list[str]:
    """127.0.0.1, localhost and the in-cluster Service names."""
    return ["127.0.0.1", "localhost", *service_dns_names(service, namespace)]


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signatures for every certificate; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def generate(
    hosts: Sequence[str],
    *,
    valid_days: int = 365,
    now: datetime.datetime | None = None,
    common_name: str = DEFAULT_SERVICE,
) -> CertificateBundle:
    """A fresh CA, and a serverAuth certificate it signs for ``hosts`` (IPs and DNS names)."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or address")
    start = (now or datetime.datetime.now(datetime.UTC)) - _CLOCK_SKEW
    end = start + _CLOCK_SKEW + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    return CertificateBundle(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def write_files(bundle: CertificateBundle, directory: Path) -> CertificateFiles:
    """Write ca.crt, tls.crt and tls.key (mode 0600) into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    files.ca_file.write_bytes(bundle.ca_pem)
    files.cert_file.write_bytes(bundle.cert_pem)
    descriptor = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(bundle.key_pem)
    os.chmod(files.key_file, 0o600)  # O_CREAT keeps the mode of a file that existed
    return files
