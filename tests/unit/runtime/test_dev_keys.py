"""``--dev`` keeps its private keys off the disk: the serving key and certificate in memfds,
and the kubeconfig's ``*-data`` credentials moved there too, so that an operator killed with
SIGKILL leaves no private key behind (the kernel frees a memfd with the process).

The last two tests run the real operator process (``--dev``, against an API server that is
not there, which is enough: the certificate is made and served before any API call) with its
own ``$TMPDIR``, and look for ``PRIVATE KEY`` in every file left there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry
from tests.e2e.operator_harness import OperatorProcess, wait_until

from gomemlimit_operator.core.api import WEBHOOK_PATH
from gomemlimit_operator.runtime.admission_metrics import ServingMetrics
from gomemlimit_operator.runtime.app import load_kube_configuration
from gomemlimit_operator.runtime.certs import (
    CertificateBundle,
    generate,
    key_matches,
    load_certificates,
    load_private_key,
)
from gomemlimit_operator.runtime.config import parse_config
from gomemlimit_operator.runtime.dev import MemoryFile, dev_certificates
from gomemlimit_operator.runtime.webhook_server import WebhookServer

DATA = b"-----BEGIN PRIVATE KEY-----\nnot really one\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's tempfile directory for the test: whatever lands there is seen."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(directory))
    return directory


@pytest.fixture
def memory_files() -> Iterator[list[MemoryFile]]:
    made: list[MemoryFile] = []
    yield made
    for memory_file in made:
        memory_file.close()


def private_keys_under(directory: Path) -> list[Path]:
    """Every file below ``directory`` that holds a PEM private key."""
    return [
        path
        for path in directory.rglob("*")
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    ]


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- MemoryFile ------------------------------------------------------------------------------


def test_a_memory_file_has_no_name_and_reads_back_whole_each_time(
    memory_files: list[MemoryFile],
) -> None:
    memory_file = MemoryFile.create("gomemlimit-test-key", DATA)
    memory_files.append(memory_file)
    assert memory_file.in_memory
    assert str(memory_file.path) == f"/proc/self/fd/{memory_file.fd}"
    assert os.readlink(memory_file.path) == "/memfd:gomemlimit-test-key (deleted)"
    assert os.fstat(memory_file.fd).st_nlink == 0  # in no directory
    assert memory_file.path.is_file()
    # Each open has its own offset: two readers at once, and again later, all read it whole.
    with memory_file.path.open("rb") as first, memory_file.path.open("rb") as second:
        assert first.read(10) == DATA[:10]
        assert second.read() == DATA
        assert first.read() == DATA[10:]
    assert memory_file.path.read_bytes() == DATA
    # Sealed: nobody can change it, not even through its own descriptor.
    with pytest.raises(PermissionError):
        memory_file.path.write_bytes(b"other")
    with pytest.raises(PermissionError):
        os.pwrite(memory_file.fd, b"x", 0)
    assert memory_file.path.read_bytes() == DATA
    # Not inherited by child processes.
    assert not os.get_inheritable(memory_file.fd)

    memory_file.close()
    assert not memory_file.path.exists()


def test_without_memfd_it_is_an_unlinked_temporary_file(
    temp_dir: Path, monkeypatch: pytest.MonkeyPatch, memory_files: list[MemoryFile]
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    memory_file = MemoryFile.create("gomemlimit-test-key", DATA)
    memory_files.append(memory_file)
    assert not memory_file.in_memory
    target = os.readlink(memory_file.path)
    assert target.startswith(f"{temp_dir}/.gomemlimit-dev-")
    assert target.endswith(" (deleted)")
    assert list(temp_dir.iterdir()) == []  # the name was gone before the key was written
    assert os.fstat(memory_file.fd).st_nlink == 0
    assert os.stat(memory_file.path).st_mode & 0o777 == 0o600
    assert memory_file.path.read_bytes() == DATA
    assert memory_file.path.read_bytes() == DATA


def test_a_failing_memfd_create_falls_back_to_the_unlinked_file(
    temp_dir: Path, monkeypatch: pytest.MonkeyPatch, memory_files: list[MemoryFile]
) -> None:
    def refuse(name: str, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refuse)
    memory_file = MemoryFile.create("gomemlimit-test-key", DATA)
    memory_files.append(memory_file)
    assert not memory_file.in_memory
    assert memory_file.path.read_bytes() == DATA
    assert list(temp_dir.iterdir()) == []


def test_a_file_that_cannot_be_read_back_is_closed_and_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = open_descriptors()
    monkeypatch.setattr(MemoryFile, "path", property(lambda self: tmp_path / "no-procfs"))
    with pytest.raises(FileNotFoundError):
        MemoryFile.create("gomemlimit-test-key", DATA)
    assert open_descriptors() == before  # nothing leaked


# --- dev_certificates --------------------------------------------------------------------------


def test_dev_certificates_write_nothing_and_the_server_serves_and_rechecks_them(
    temp_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert_dir = tmp_path / "certs"
    cert_file, key_file, ca_pem = dev_certificates(parse_config(["--dev"], env={}), cert_dir)
    assert os.readlink(key_file) == "/memfd:gomemlimit-dev-tls.key (deleted)"
    assert os.readlink(cert_file) == "/memfd:gomemlimit-dev-tls.crt (deleted)"
    assert not cert_dir.exists()
    assert list(temp_dir.iterdir()) == []
    (ca,) = load_certificates(ca_pem)
    (cert,) = load_certificates(cert_file.read_bytes())
    assert cert.issuer == ca.subject
    assert key_matches(cert, load_private_key(key_file.read_bytes()))

    server = WebhookServer(
        lambda review: asyncio.sleep(0, review),
        host="127.0.0.1",
        port=0,
        path=WEBHOOK_PATH,
        cert_file=cert_file,
        key_file=key_file,
        metrics=ServingMetrics(CollectorRegistry()),
    )

    async def scenario() -> None:
        async with server:
            context = ssl.create_default_context(cadata=ca_pem.decode())
            _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
            served = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
            assert served == cert.public_bytes(Encoding.DER)
            # The periodic re-read: the files read the same, so nothing is reloaded or logged.
            with caplog.at_level(logging.INFO, logger="gomemlimit_operator.runtime.webhook_server"):
                assert server.check_certificate() is False
                assert server.check_certificate() is False
            assert [r for r in caplog.records if r.levelno >= logging.INFO] == []

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_without_procfs_dev_certificates_are_written_to_the_cert_dir_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(MemoryFile, "path", property(lambda self: tmp_path / "no-procfs"))
    with caplog.at_level(logging.WARNING, logger="gomemlimit_operator.runtime.dev"):
        cert_file, key_file, _ = dev_certificates(
            parse_config(["--dev"], env={}), tmp_path / "certs"
        )
    assert (cert_file, key_file) == (tmp_path / "certs" / "tls.crt", tmp_path / "certs" / "tls.key")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "Cannot keep the dev certificate in memory" in caplog.text


# --- the kubeconfig's credentials ------------------------------------------------------------


def kubeconfig(path: Path, server: str, bundle: CertificateBundle, **user: str) -> Path:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    credentials = user or {
        "client-certificate-data": b64(bundle.cert_pem),
        "client-key-data": b64(bundle.key_pem),
    }
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": server,
                            "certificate-authority-data": b64(bundle.ca_pem),
                        },
                    }
                ],
                "users": [{"name": "u", "user": credentials}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_the_kubeconfig_client_key_is_moved_into_memory(temp_dir: Path, tmp_path: Path) -> None:
    bundle = generate(["127.0.0.1"])
    path = kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:6443", bundle)
    for _ in range(2):  # again: the client caches its files by content
        configuration = load_kube_configuration(path)
        assert os.readlink(configuration.key_file) == "/memfd:kubeconfig-key_file (deleted)"
        assert Path(configuration.key_file).read_bytes() == bundle.key_pem
        assert Path(configuration.cert_file).read_bytes() == bundle.cert_pem
        assert Path(configuration.ssl_ca_cert).read_bytes() == bundle.ca_pem
        assert list(temp_dir.iterdir()) == []  # the client's files and their directory: gone
        # What the clients do with them: load the chain and the CA.
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        context.load_cert_chain(configuration.cert_file, configuration.key_file)


def test_files_the_kubeconfig_names_are_left_where_they_are(temp_dir: Path, tmp_path: Path) -> None:
    bundle = generate(["127.0.0.1"])
    (tmp_path / "client.crt").write_bytes(bundle.cert_pem)
    (tmp_path / "client.key").write_bytes(bundle.key_pem)
    path = kubeconfig(
        tmp_path / "kubeconfig",
        "https://127.0.0.1:6443",
        bundle,
        **{
            "client-certificate": str(tmp_path / "client.crt"),
            "client-key": str(tmp_path / "client.key"),
        },
    )
    configuration = load_kube_configuration(path)
    assert configuration.key_file == str(tmp_path / "client.key")
    assert configuration.cert_file == str(tmp_path / "client.crt")
    assert os.readlink(configuration.ssl_ca_cert) == "/memfd:kubeconfig-ssl_ca_cert (deleted)"
    assert list(temp_dir.iterdir()) == []


# --- the operator process ---------------------------------------------------------------------


DEV_KEY = "/memfd:gomemlimit-dev-tls.key (deleted)"
KUBECONFIG_KEY = "/memfd:kubeconfig-key_file (deleted)"


def process_memfds(operator: OperatorProcess) -> dict[str, bytes]:
    """The operator's memfds (by name) and what they hold, read through /proc/<pid>/fd."""
    assert operator.process is not None
    found: dict[str, bytes] = {}
    for entry in Path(f"/proc/{operator.process.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(entry)
            if target.startswith("/memfd:"):
                found[target] = entry.read_bytes()
    return found


@pytest.fixture
def dev_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[OperatorProcess, Path]]:
    """A ``--dev`` operator whose ``$TMPDIR`` is a directory of the test, and whose kubeconfig
    carries a client key (``client-key-data``, as the e2e cluster's does), for an API server
    that is not there; running, with its webhook certificate made (before /healthz serves and
    before any API call; the webhook listens only once the policies are loaded, which never
    happens here)."""
    temp = tmp_path / "operator-tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # OperatorProcess passes our environment on
    bundle = generate(["127.0.0.1"])
    operator = OperatorProcess(
        kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1", bundle),
        tmp_path / "operator.log",
        webhook_name="gomemlimit-operator-dev-keys-test",
    )
    operator.launch()

    def health_served() -> bool:  # the health server starts once the certificate is made
        assert operator.running, operator.log_tail()
        return operator.healthz()[0] == 200

    try:
        wait_until(health_served, "the --dev operator's /healthz", timeout=60)
        yield operator, temp
    finally:
        operator.kill()


def test_a_sigkilled_dev_operator_leaves_no_private_key_on_disk(
    dev_operator: tuple[OperatorProcess, Path],
) -> None:
    operator, temp = dev_operator
    # While it runs, its keys are in no file: in memfds.
    assert private_keys_under(temp) == []
    held = process_memfds(operator)
    assert b"PRIVATE KEY" in held.get(DEV_KEY, b"")
    assert b"PRIVATE KEY" in held.get(KUBECONFIG_KEY, b"")
    assert "Dev certificate and key kept in memory (memfd)" in operator.log_text()

    operator.kill()  # SIGKILL: no atexit, no finally, no TemporaryDirectory cleanup
    assert operator.process is not None
    assert operator.process.returncode == -9
    assert private_keys_under(temp) == []
    # At most the (empty) temporary directory of --manage-certificates' default is left.
    leftovers = sorted(str(p.relative_to(temp)) for p in temp.rglob("*"))
    assert all(name.startswith("gomemlimit-operator-") for name in leftovers), leftovers
    assert all(path.is_dir() for path in temp.rglob("*"))


def test_a_cleanly_stopped_dev_operator_leaves_nothing(
    dev_operator: tuple[OperatorProcess, Path],
) -> None:
    operator, temp = dev_operator
    assert operator.stop() == 0
    assert list(temp.iterdir()) == []
