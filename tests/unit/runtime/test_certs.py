"""Self-signed CA and serving certificate: a real TLS handshake verifies them."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from gomemlimit_operator.runtime.certs import (
    default_hosts,
    generate,
    service_dns_names,
    write_files,
)


def test_names_cover_loopback_and_service() -> None:
    hosts = default_hosts("ops")
    assert hosts[:2] == ["127.0.0.1", "localhost"]
    assert "gomemlimit-operator.ops.svc" in hosts
    assert service_dns_names("s", "n")[-1] == "s.n.svc.cluster.local"


def test_certificate_contents() -> None:
    bundle = generate(["127.0.0.1", "localhost", "svc.ns.svc"])
    ca = x509.load_pem_x509_certificate(bundle.ca_pem)
    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "svc.ns.svc"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    ca.verify_directly_issued_by(ca)
    cert.verify_directly_issued_by(ca)


def test_tls_handshake_with_the_ca_bundle(tmp_path: Path) -> None:
    bundle = generate(["127.0.0.1", "localhost"])
    files = write_files(bundle, tmp_path / "certs")
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert files.ca_file.read_bytes() == bundle.ca_pem

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert_file, files.key_file)
    names = ("127.0.0.1", "localhost")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in names:
                connection, _address = listener.accept()
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.sendall(b"hello")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_context = ssl.create_default_context(cadata=bundle.ca_pem.decode())
        for name in names:  # verified by IP SAN, then by DNS SAN
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                client_context.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.recv(5) == b"hello"
        thread.join(5)


def test_another_ca_is_not_trusted() -> None:
    first, second = generate(["127.0.0.1"]), generate(["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    other_ca = x509.load_pem_x509_certificate(second.ca_pem)
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(other_ca)


def test_needs_a_host() -> None:
    with pytest.raises(ValueError, match="host"):
        generate([])
