"""A self-signed CA and a webhook serving certificate, made with ``cryptography``.

kopf's own generator needs oscrypto, which fails on OpenSSL 3; this module replaces it.
Used by ``--dev``, by tests, and by ``--manage-certificates``
(:mod:`.certificate_manager`), which keeps a CA and reissues serving certificates with
:func:`new_ca` and :func:`issue_serving`. Files are written atomically (a temporary file in
the same directory, then a rename), so a reader never sees half a file.
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
    "PrivateKey",
    "certificate_pem",
    "default_hosts",
    "generate",
    "issue_serving",
    "key_matches",
    "load_certificates",
    "load_private_key",
    "new_ca",
    "normalized_hosts",
    "private_key_pem",
    "san_strings",
    "service_dns_names",
    "write_atomically",
    "write_files",
]

DEFAULT_SERVICE: Final = "gomemlimit-operator"
_CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
"""Certificates are valid from this long before they were made: clocks differ."""

PrivateKey = ec.EllipticCurvePrivateKey


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


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now or datetime.datetime.now(datetime.UTC)


def new_ca(
    *,
    valid_for: datetime.timedelta,
    now: datetime.datetime | None = None,
    common_name: str = DEFAULT_SERVICE,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA (P-256), valid from a little before ``now`` until ``now + valid_for``.

    Its subject carries the time it was made, so that two CAs of one operator differ."""
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(x509.random_serial_number())),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_serving(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    hosts: Sequence[str],
    *,
    valid_for: datetime.timedelta,
    now: datetime.datetime | None = None,
    common_name: str = DEFAULT_SERVICE,
) -> tuple[x509.Certificate, PrivateKey]:
    """A serverAuth certificate for ``hosts`` (IPs and DNS names), signed by the CA.

    It expires at ``now + valid_for``, or with the CA if that comes first."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or address")
    now = _now(now)
    end = min(now + valid_for, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
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
    return cert, key


def certificate_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in order; ValueError if there is none."""
    return x509.load_pem_x509_certificates(pem)


def load_private_key(pem: bytes) -> PrivateKey:
    """A P-256 private key from PEM; ValueError for anything else."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    """Whether ``key`` is the private half of the certificate's public key."""
    return cert.public_key() == key.public_key()


def san_strings(cert: x509.Certificate) -> frozenset[str]:
    """The certificate's subject alternative names: DNS names and IP addresses as text."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return frozenset([*dns, *ips])


def normalized_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """Hosts as :func:`san_strings` shows them (IP addresses in their canonical form)."""
    found: set[str] = set()
    for host in hosts:
        try:
            found.add(str(ipaddress.ip_address(host)))
        except ValueError:
            found.add(host)
    return frozenset(found)


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
    valid_for = datetime.timedelta(days=valid_days)
    ca_cert, ca_key = new_ca(valid_for=valid_for, now=now, common_name=common_name)
    cert, key = issue_serving(
        ca_cert, ca_key, hosts, valid_for=valid_for, now=now, common_name=common_name
    )
    return CertificateBundle(
        ca_pem=certificate_pem(ca_cert),
        cert_pem=certificate_pem(cert),
        key_pem=private_key_pem(key),
    )


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # O_CREAT keeps the mode of a file that existed
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_files(bundle: CertificateBundle, directory: Path) -> CertificateFiles:
    """Write ca.crt, tls.crt and tls.key (mode 0600) into ``directory``, each atomically;
    returns the paths. The key is written before the certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    write_atomically(files.ca_file, bundle.ca_pem)
    write_atomically(files.key_file, bundle.key_pem, 0o600)
    write_atomically(files.cert_file, bundle.cert_pem)
    return files
