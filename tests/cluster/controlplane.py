#!/usr/bin/env python3
"""A real, local Kubernetes control plane for tests and the demo, built from Go modules.

It runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which plays the
kubelets of fake Nodes) as plain processes bound to 127.0.0.1, with certificates generated at
start. The binaries come from ``tests/cluster/build.sh`` (versions in ``versions.env``).

As a script::

    python -m tests.cluster.controlplane up --dir .cluster     # prints `export KUBECONFIG=...`
    python -m tests.cluster.controlplane status --dir .cluster
    python -m tests.cluster.controlplane down --dir .cluster

(from the repository root). As a library::

    from tests.cluster.controlplane import ControlPlane, ensure_built

    with ControlPlane(tmp_dir) as cp:          # builds on first use, starts, waits for Ready
        cp.kubectl("get", "nodes")
        print(cp.kubeconfig, cp.server, cp.ca_cert_path)

Only the standard library, ``cryptography`` and ``PyYAML`` are used (no kubernetes client, no
gomemlimit_operator import), so it starts fast and cannot be broken by the code under test.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import datetime
import fcntl
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import realnode

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build.sh"

# Inside 127.0.0.0/8: a ClusterIP (which the API server dials for a webhook, an APIService or a
# proxy request naming a Service) routes to `lo` and can never reach a private network.
SERVICE_CIDR = "127.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTEXT_NAME = "gomemlimit-local"
NODE_NAME_PREFIX = "kwok-node-"

# Marker that makes a directory ours: `down` only deletes a directory that contains it.
MARKER_FILE = ".gomemlimit-controlplane"
STATE_FILE = "state.json"

# Start order; `stop` goes the other way.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "containerd",
    "kubelet",
)
NODE_COMPONENTS = ("containerd", "kubelet")
REAL_NODE_ENV = "GOMEMLIMIT_REAL_NODE"

__all__ = [
    "Binaries",
    "BuildError",
    "ControlPlane",
    "ControlPlaneError",
    "KubectlError",
    "cache_root",
    "ensure_built",
    "read_versions",
]


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


class BuildError(ControlPlaneError):
    """tests/cluster/build.sh failed; the message carries its output."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl or helm command failed; str() includes its stderr."""

    def __str__(self) -> str:
        out = (self.stderr or self.stdout or "").strip()
        return f"{super().__str__()}\n{out}" if out else super().__str__()


# --------------------------------------------------------------------------------------------
# Versions, binaries and the build
# --------------------------------------------------------------------------------------------


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse versions.env (KEY=VALUE lines, # comments) into a dict."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip().strip("\"'")
    return versions


def cache_root() -> Path:
    """Where build.sh caches the binaries: $GOMEMLIMIT_CACHE or ~/.cache/gomemlimit-operator."""
    env = os.environ.get("GOMEMLIMIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gomemlimit-operator"


@dataclass(frozen=True)
class Binaries:
    """Paths of the pinned binaries in the build cache (see build.sh for the layout)."""

    bin_dir: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwok_stages: tuple[Path, ...]
    helm: Path
    kubelet: Path
    promtool: Path
    prometheus: Path
    versions: Mapping[str, str]

    @classmethod
    def locate(cls, cache: Path | None = None) -> Binaries:
        """Compute the paths from versions.env; does not check that they exist."""
        versions = read_versions()
        bin_dir = (cache or cache_root()) / "bin"
        k8s = bin_dir / f"kubernetes-{versions['K8S_VERSION']}"
        kwok = bin_dir / f"kwok-{versions['KWOK_VERSION']}"
        prometheus = bin_dir / f"prometheus-{versions['PROMETHEUS_VERSION']}"
        return cls(
            bin_dir=bin_dir,
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            etcd=bin_dir / f"etcd-{versions['ETCD_VERSION']}" / "etcd",
            kwok=kwok / "kwok",
            kwok_stages=tuple(sorted((kwok / "stages").glob("*.yaml"))),
            helm=bin_dir / f"helm-{versions['HELM_VERSION']}" / "helm",
            kubelet=bin_dir / f"kubelet-{versions['K8S_VERSION']}" / "kubelet",
            promtool=prometheus / "promtool",
            prometheus=prometheus / "prometheus",
            versions=versions,
        )

    def missing(self) -> list[Path]:
        """Binaries (and the kwok stage dir) that do not exist."""
        paths = [
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kubectl,
            self.etcd,
            self.kwok,
            self.helm,
            self.kubelet,
            self.promtool,
            self.prometheus,
        ]
        gone = [p for p in paths if not os.access(p, os.X_OK)]
        if not self.kwok_stages:
            gone.append(self.kwok.parent / "stages")
        return gone


def ensure_built(*, quiet: bool = True, force: bool = False) -> Binaries:
    """Run build.sh (seconds when warm, many minutes when cold) and return the binary paths.

    Raises BuildError with build.sh's output (which names the failed step) on failure.
    """
    cmd = ["bash", str(BUILD_SCRIPT)]
    if quiet:
        cmd.append("--quiet")
    if force:
        cmd.append("--force")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    binaries = Binaries.locate()
    if missing := binaries.missing():
        raise BuildError(f"build.sh succeeded but these are missing: {missing}")
    return binaries


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256 keys are generated in microseconds (RSA takes ~100 ms each) and Kubernetes accepts
    # them everywhere, including as the service-account token signing key (ES256).
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class _Pki:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @classmethod
    def new(cls) -> _Pki:
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gomemlimit-local-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A leaf certificate: a server cert if names/IPs are given, else a client cert."""
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        server = bool(server_names or server_ips)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.ca_key, hashes.SHA256())


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert_pem),
                    "client-key-data": b64(key_pem),
                },
            }
        ],
        "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": user}}],
        "current-context": CONTEXT_NAME,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _die_with_parent_preexec() -> Any:
    """A preexec_fn: the child gets SIGKILL when the thread that started it dies.

    The libc handle is loaded before fork; the function only makes a syscall in the child.
    """
    libc = _load_libc()
    parent = os.getpid()

    def preexec() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so they are distinct)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Shared with the real node's teardown (realnode.py), which verifies PIDs the same way.
_proc_cmdline = realnode.proc_cmdline
_proc_alive = realnode.proc_alive


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Proc:
    name: str
    pid: int
    binary: str
    popen: subprocess.Popen[bytes] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "pgid": self.pid, "binary": self.binary}


# Live control planes of this process, stopped at exit and on SIGTERM/SIGHUP.
_LIVE: set[ControlPlane] = set()
_LIVE_LOCK = threading.Lock()
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _stop_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for cp in live:
        with contextlib.suppress(Exception):
            cp.stop()


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    _stop_all_live()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_cleanup_hooks() -> None:
    if getattr(_install_cleanup_hooks, "done", False):
        return
    atexit.register(_stop_all_live)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            _PREVIOUS_HANDLERS[signum] = signal.getsignal(signum)
            signal.signal(signum, _on_fatal_signal)
    _install_cleanup_hooks.done = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# A tiny HTTPS client for readiness checks and node creation (no kubernetes client needed)
# --------------------------------------------------------------------------------------------


class _Api:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        self.host, _, port = server.removeprefix("https://").partition(":")
        self.port = int(port)
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")


def fake_node(
    name: str, kubelet_version: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Node for kwok to manage (see kwok's docs, "Manage single/all nodes"), 110 pods, with
    ``labels`` besides its own (bench/bench_kwok.py marks its nodes).

    No taint, so ordinary workloads schedule onto it without tolerations.
    """
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
                **(labels or {}),
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "kubeletVersion": kubelet_version,
                "operatingSystem": "linux",
            },
            "phase": "Running",
        },
    }


# --------------------------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    ``ControlPlane(dir).start()`` builds the binaries if needed, starts everything with state,
    certificates, pids and logs under ``dir``, and returns once /readyz is ok, the fake nodes
    are Ready and schedulable, and the ``default`` ServiceAccount exists. ``stop()`` kills what
    was started and removes ``dir``. Use it as a context manager.

    detach=False (the library default): children die with this process (PR_SET_PDEATHSIG) and
    are stopped at exit and on SIGTERM/SIGHUP. detach=True (the CLI's `up`): they outlive it
    and are stopped with `down`.
    """

    # Component processes that `stop` may kill, by the basename of their argv[0].
    _BINARY_NAMES: ClassVar[dict[str, str]] = {c: c for c in COMPONENTS}

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        nodes: int = 2,
        binaries: Binaries | None = None,
        detach: bool = False,
        startup_timeout: float = 90.0,
        log: bool = False,
        real_node: bool | str | None = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.nodes = nodes
        if real_node is None:
            real_node = os.environ.get(REAL_NODE_ENV, "auto")
        if isinstance(real_node, str):
            mode = real_node.lower()
            if mode not in ("auto", "1", "true", "yes", "0", "false", "no", ""):
                raise ValueError(f"real_node must be True, False or 'auto', not {real_node!r}")
            real_node = "auto" if mode == "auto" else mode in ("1", "true", "yes")
        self.real_node_mode: bool | str = real_node
        # After start: the node (None if it is not running) and, if not, why in one line.
        self.real_node: realnode.RealNode | None = None
        self.real_node_reason: str | None = None
        self._pki: _Pki | None = None
        self.detach = detach
        self.startup_timeout = startup_timeout
        self._binaries = binaries
        self._log_enabled = log
        self._owned = True
        self._procs: list[_Proc] = []
        self.server = ""
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.ca_cert_path = self.state_dir / "pki" / "ca.crt"
        self.log_dir = self.state_dir / "logs"
        self.pid_dir = self.state_dir / "pids"
        self.startup_seconds: float | None = None
        self._t0 = 0.0
        self._load_state()

    # -- public API ---------------------------------------------------------------------------

    @classmethod
    def attach(
        cls, kubeconfig: str | os.PathLike[str], *, binaries: Binaries | None = None
    ) -> Self:
        """Use an already running cluster (any kubeconfig); `stop()` leaves it alone.

        kubectl()/helm() still use the pinned binaries (built on first use).
        """
        path = Path(kubeconfig).resolve()
        config = yaml.safe_load(path.read_text())
        current = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
        if current not in contexts:
            raise ControlPlaneError(f"{path}: no current-context")
        cluster = clusters[contexts[current]["cluster"]]
        scratch = Path(tempfile.mkdtemp(prefix="gomemlimit-attached-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        self = cls(scratch, binaries=binaries)
        self._owned = False
        self.kubeconfig = path
        self.server = cluster["server"]
        if "certificate-authority" in cluster:
            ca = Path(cluster["certificate-authority"])
            self.ca_cert_path = ca if ca.is_absolute() else path.parent / ca
        elif "certificate-authority-data" in cluster:
            self.ca_cert_path = scratch / "ca.crt"
            _write(self.ca_cert_path, base64.b64decode(cluster["certificate-authority-data"]))
        # A cluster from `controlplane.py up`: its state.json says whether it has a real node.
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((path.parent / STATE_FILE).read_text())
            if state.get("real_node"):
                self.real_node = realnode.RealNode(path.parent)
            self.real_node_reason = state.get("real_node_reason")
        return self

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            self._binaries = ensure_built()
        return self._binaries

    @property
    def owned(self) -> bool:
        """False for `attach`ed clusters, which stop() does not touch."""
        return self._owned

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, and the kubectl/helm dirs first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        dirs = [str(self.binaries.kubectl.parent), str(self.binaries.helm.parent)]
        env["PATH"] = os.pathsep.join([*dirs, env.get("PATH", "")])
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; raises KubectlError if check fails."""
        cmd = [
            str(self.binaries.kubectl),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.state_dir / 'kubectl-cache'}",  # not ~/.kube/cache
            *args,
        ]
        return self._run(cmd, input=input, check=check, timeout=timeout)

    def helm(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned helm against this cluster, with its config/cache under the state dir."""
        helm_home = self.state_dir / "helm"
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
        cmd = [str(self.binaries.helm), *args]
        return self._run(cmd, input=input, check=check, timeout=timeout, env=env)

    def is_running(self) -> bool:
        """True if every recorded process is alive and ours, and /readyz answers ok."""
        if not self._procs or not self.server or not self.kubeconfig.exists():
            return False
        if not all(self._is_ours(p) for p in self._procs):
            return False
        return self._readyz()

    def start(self) -> Self:
        """Start everything and wait until usable. Raises ControlPlaneError on failure."""
        if not self._owned:
            return self
        lock = self._lock()
        try:
            if self._procs and any(self._is_ours(p) for p in self._procs):
                if self.is_running():
                    raise ControlPlaneError(
                        f"a control plane is already running in {self.state_dir}; "
                        "stop it first (python -m tests.cluster.controlplane down "
                        f"--dir {self.state_dir})"
                    )
                self._stop_processes()
            binaries = self.binaries
            self._t0 = t0 = time.monotonic()
            self._clean_state_dir()
            if not self.detach:
                _install_cleanup_hooks()
                with _LIVE_LOCK:
                    _LIVE.add(self)
            try:
                self._start(binaries)
            except BaseException as exc:
                message = str(exc)
                self._stop_processes()
                with _LIVE_LOCK:
                    _LIVE.discard(self)  # keep the logs: do not remove the state at exit
                if isinstance(exc, ControlPlaneError):
                    raise ControlPlaneError(f"{message}\n(logs kept in {self.log_dir})") from None
                raise
            self.startup_seconds = time.monotonic() - t0
            self._save_state("ready")
            self._log(f"control plane ready in {self.startup_seconds:.1f}s: {self.server}")
            return self
        finally:
            lock.close()

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop every process this control plane started and remove its state directory.

        Safe to call twice, after a crash, and on a directory that holds stale pid files:
        a pid is only signalled if /proc/<pid>/cmdline shows it is one of ours.
        """
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if not self._owned:
            return
        self._stop_processes()
        self._remove_state(keep_logs=keep_logs)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ControlPlane({str(self.state_dir)!r}, server={self.server!r})"

    def restart_apiserver(self, *, timeout: float = 90.0) -> float:
        """Stop kube-apiserver with SIGTERM (as a control-plane upgrade does), start it again
        with the same flags on the same port, and return the seconds it was unavailable,
        once its /readyz is ok. Clients, the kubelet included, see their watches end and
        must reconnect."""
        [proc] = [p for p in self._procs if p.name == "kube-apiserver" and self._is_ours(p)]
        argv = _proc_cmdline(proc.pid)
        started = time.monotonic()
        self._signal_all([proc], signal.SIGTERM)
        if not self._wait_gone([proc], 10.0):  # it may wait for long requests: not here
            self._log("kube-apiserver: SIGKILL 10s after SIGTERM")
            self._signal_all([proc], signal.SIGKILL)
            self._wait_gone([proc], 5.0)
        self._procs.remove(proc)
        self._spawn("kube-apiserver", Path(argv[0]), *argv[1:])
        self._wait("kube-apiserver /readyz", self._readyz, timeout=timeout)
        self._save_state("ready")
        self._log(f"kube-apiserver restarted in {time.monotonic() - started:.1f}s")
        return time.monotonic() - started

    def real_node_status(self) -> str:
        """One line: the real node's name, or why the cluster has kwok nodes only."""
        if self.real_node is not None:
            return f"real node {self.real_node.name} is Ready (containerd + runc + kubelet)"
        if self.real_node_reason:
            return f"no real node: {self.real_node_reason}; kwok nodes only"
        return "no real node (not requested); kwok nodes only"

    # -- starting -----------------------------------------------------------------------------

    def _start(self, b: Binaries) -> None:
        d = self.state_dir
        for sub in ("pki", "logs", "pids", "kubeconfigs", "kwok"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / MARKER_FILE).write_text("created by tests/cluster/controlplane.py\n")
        etcd_port, etcd_peer, api_port, kcm_port, sched_port, kwok_port = _free_ports(6)
        self.server = f"https://127.0.0.1:{api_port}"
        self._save_state("starting")

        pki = self._write_pki()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            b.etcd,
            "--name=controlplane",
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=controlplane=http://127.0.0.1:{etcd_peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        )
        self._wait("etcd /health", lambda: self._etcd_healthy(etcd_port), timeout=30)
        self._log("etcd is healthy")

        self._spawn(
            "kube-apiserver",
            b.kube_apiserver,
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--profiling=false",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        )
        self._wait("kube-apiserver /readyz", self._readyz, timeout=self.startup_timeout)
        self._log("kube-apiserver is ready")

        common = [
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--profiling=false",
        ]
        kcm_kc = d / "kubeconfigs" / "kube-controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            b.kube_controller_manager,
            *common,
            f"--secure-port={kcm_port}",
            f"--cert-dir={pki / 'kube-controller-manager'}",
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            "--controllers=*",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
        )
        sched_kc = d / "kubeconfigs" / "kube-scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            b.kube_scheduler,
            *common,
            f"--secure-port={sched_port}",
            f"--cert-dir={pki / 'kube-scheduler'}",
            f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
        )
        self._spawn(
            "kwok",
            b.kwok,
            f"--kubeconfig={d / 'kubeconfigs' / 'kwok.kubeconfig'}",
            # Only the fake nodes: the real node's kubelet reports for itself.
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            # Renew a Lease per node like a kubelet; the heartbeat-with-lease stage only
            # refreshes node status every ~10-20 min and relies on it.
            "--node-lease-duration-seconds=40",
            *(f"--config={s}" for s in b.kwok_stages),
            f"--server-address=127.0.0.1:{kwok_port}",
            f"--node-port={kwok_port}",
            "--node-ip=127.0.0.1",
            f"--cidr={POD_CIDR}",
            env={"KWOK_WORKDIR": str(d / "kwok")},  # never read the user's ~/.kwok/kwok.yaml
        )

        api = self._api()
        for i in range(self.nodes):
            node = fake_node(f"{NODE_NAME_PREFIX}{i}", b.versions["K8S_VERSION"])
            status, body = api.request("POST", "/api/v1/nodes", node)
            if status not in (200, 201, 409):
                raise ControlPlaneError(f"creating node {NODE_NAME_PREFIX}{i}: {status} {body}")
        self._wait("nodes Ready and schedulable", self._nodes_ready, timeout=60)
        self._log(f"{self.nodes} nodes are Ready")
        self._wait(
            "ServiceAccount default/default",
            lambda: (
                api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            timeout=60,
        )
        if self.real_node_mode:
            self._start_real_node(b)

    # -- the real node ------------------------------------------------------------------------

    def _start_real_node(self, b: Binaries) -> None:
        """Start containerd and the kubelet; in "auto" mode a failure only records why."""
        reason = realnode.unavailable_reason(b.kubelet)
        if reason is None:
            try:
                self._start_real_node_processes(b)
                return
            except (ControlPlaneError, OSError, subprocess.SubprocessError) as exc:
                reason = str(exc)
                if self.real_node_mode is True:
                    raise
                self._stop_real_node()
        elif self.real_node_mode is True:
            raise ControlPlaneError(f"cannot start the real node: {reason}")
        self.real_node_reason = reason.splitlines()[0] if reason else "unknown"
        self._log(f"no real node: {self.real_node_reason}; kwok nodes only")
        self._save_state("starting")

    def _start_real_node_processes(self, b: Binaries) -> None:
        node = realnode.RealNode(self.state_dir, log=self._log)
        assert self._pki is not None
        pki_dir = self.state_dir / "pki"
        key, cert = self._pki.issue(f"system:node:{node.name}", organizations=["system:nodes"])
        kubeconfig = _kubeconfig(
            self.server,
            _cert_pem(self._pki.ca_cert),
            _cert_pem(cert),
            _key_pem(key),
            f"system:node:{node.name}",
        )
        key, cert = self._pki.issue(
            node.name, server_names=[node.name, "localhost"], server_ips=["127.0.0.1"]
        )
        _write(pki_dir / "kubelet-serving.crt", _cert_pem(cert), 0o644)
        _write(pki_dir / "kubelet-serving.key", _key_pem(key))
        kubelet_port, healthz_port = _free_ports(2)
        node.write_configs(
            ca_cert=self.ca_cert_path,
            kubeconfig_text=kubeconfig,
            serving_cert=pki_dir / "kubelet-serving.crt",
            serving_key=pki_dir / "kubelet-serving.key",
            kubelet_port=kubelet_port,
            healthz_port=healthz_port,
        )
        node.create_cgroups()
        containerd = shutil.which("containerd") or "containerd"
        self._spawn("containerd", Path(containerd), *node.containerd_argv())
        self._wait("containerd", node.containerd_ready, timeout=30)
        try:
            node.import_image(node.build_pause_image())
        except Exception as exc:  # images.ImageError, subprocess errors
            raise ControlPlaneError(f"cannot build or import the pause image: {exc}") from None
        self._spawn("kubelet", b.kubelet, *node.kubelet_argv())
        self._wait(f"node {node.name} Ready", lambda: self._real_node_ready(node), timeout=90)
        self.real_node = node
        self.real_node_reason = None
        self._save_state("starting")
        self._log(f"real node {node.name} is Ready")

    def _real_node_ready(self, node: realnode.RealNode) -> bool:
        status, body = self._api().request("GET", f"/api/v1/nodes/{node.name}")
        if status != 200:
            return False
        conditions = {c["type"]: c["status"] for c in body.get("status", {}).get("conditions", [])}
        return conditions.get("Ready") == "True" and not any(
            t.get("key", "").startswith("node.kubernetes.io/")
            for t in body["spec"].get("taints", [])
        )

    def _stop_real_node(self) -> list[str]:
        """Tear the real node down (by PID) and clean up; returns what could not be removed."""
        node_dir = self.state_dir / "node"
        procs = [p for p in self._known_procs() if p.name in NODE_COMPONENTS and self._is_ours(p)]
        if not node_dir.exists() and not procs:
            return []
        node = realnode.RealNode(self.state_dir, log=self._log)

        def stop(pids: list[int], timeout: float) -> None:
            batch = [p for p in procs if p.pid in pids]
            self._signal_all(batch, signal.SIGTERM)
            if not self._wait_gone(batch, timeout):
                self._signal_all([p for p in batch if self._is_ours(p)], signal.SIGKILL)
                self._wait_gone(batch, 5.0)

        left = node.teardown(
            kubelet=[p.pid for p in procs if p.name == "kubelet"],
            containerd=[p.pid for p in procs if p.name == "containerd"],
            stop=stop,
        )
        for p in procs:
            if p.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=1)
        self._procs = [p for p in self._procs if p.name not in NODE_COMPONENTS]
        self.real_node = None
        if left:
            self._log(f"real node teardown left: {left}")
        return left

    def _write_pki(self) -> Path:
        pki_dir = self.state_dir / "pki"
        pki = self._pki = _Pki.new()
        ca_pem = _cert_pem(pki.ca_cert)
        _write(pki_dir / "ca.crt", ca_pem, 0o644)
        _write(pki_dir / "ca.key", _key_pem(pki.ca_key))

        key, cert = pki.issue(
            "kube-apiserver",
            server_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            server_ips=["127.0.0.1", str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))],
        )
        _write(pki_dir / "apiserver.crt", _cert_pem(cert), 0o644)
        _write(pki_dir / "apiserver.key", _key_pem(key))

        sa_key = _new_key()
        _write(pki_dir / "sa.key", _key_pem(sa_key))
        sa_pub = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write(pki_dir / "sa.pub", sa_pub, 0o644)

        # (file, CN, O): the admin is in system:masters; kwok writes node/pod status and leases
        # for every fake node, which the Node authorizer would not allow one identity, so it is
        # an admin too. The controller-manager and scheduler use their bootstrap RBAC users.
        clients = [
            (self.kubeconfig, "gomemlimit-admin", ["system:masters"]),
            (
                self._kc("kube-controller-manager"),
                "system:kube-controller-manager",
                ["system:masters"],
            ),
            (self._kc("kube-scheduler"), "system:kube-scheduler", []),
            (self._kc("kwok"), "kwok-controller", ["system:masters"]),
        ]
        # The API server's client certificate for kubelets (logs, exec; the real node).
        key, cert = pki.issue("kube-apiserver-kubelet-client", organizations=["system:masters"])
        _write(pki_dir / "apiserver-kubelet-client.crt", _cert_pem(cert), 0o644)
        _write(pki_dir / "apiserver-kubelet-client.key", _key_pem(key))
        for path, cn, orgs in clients:
            key, cert = pki.issue(cn, organizations=orgs)
            config = _kubeconfig(self.server, ca_pem, _cert_pem(cert), _key_pem(key), cn)
            _write(path, config)
            if path == self.kubeconfig:
                _write(pki_dir / "admin.crt", _cert_pem(cert), 0o644)
                _write(pki_dir / "admin.key", _key_pem(key))
        return pki_dir

    def _kc(self, component: str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{component}.kubeconfig"

    def _spawn(
        self, name: str, binary: Path, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # own process group; Ctrl-C in a terminal spares it
                preexec_fn=None if self.detach else _die_with_parent_preexec(),
            )
        proc = _Proc(name=name, pid=popen.pid, binary=str(binary), popen=popen)
        self._procs.append(proc)
        _write(self.pid_dir / f"{name}.pid", f"{popen.pid}\n", 0o644)
        self._save_state("starting")
        self._log(f"started {name} (pid {popen.pid})")

    def _wait(self, what: str, ready: Callable[[], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        last_error = ""
        while True:
            for p in self._procs:
                if p.popen is not None and p.popen.poll() is not None:
                    raise ControlPlaneError(
                        f"{p.name} exited with code {p.popen.returncode} while waiting for "
                        f"{what}; last lines of {self.log_dir / (p.name + '.log')}:\n"
                        f"{_tail(self.log_dir / (p.name + '.log'))}"
                    )
            try:
                if ready():
                    return
            except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}.log ---\n{_tail(self.log_dir / (p.name + '.log'), 10)}"
                    for p in self._procs
                )
                raise ControlPlaneError(
                    f"timed out after {timeout:.0f}s waiting for {what}"
                    f"{' (' + last_error + ')' if last_error else ''}\n{logs}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _api(self) -> _Api:
        pki = self.state_dir / "pki"
        return _Api(self.server, self.ca_cert_path, pki / "admin.crt", pki / "admin.key")

    def _readyz(self) -> bool:
        try:
            status, _ = self._api().request("GET", "/readyz", timeout=2.0)
        except (OSError, http.client.HTTPException, ssl.SSLError):
            return False
        return status == 200

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return resp.status == 200 and b'"true"' in body

    def _nodes_ready(self) -> bool:
        status, body = self._api().request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
        if status != 200:
            return False
        items = body.get("items", [])
        if len(items) < self.nodes:
            return False
        for node in items:
            conditions = {
                c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])
            }
            if conditions.get("Ready") != "True":
                return False
            # The controller-manager lifts the not-ready taint once the node is Ready.
            if any(
                t.get("key", "").startswith("node.kubernetes.io/")
                for t in node["spec"].get("taints", [])
            ):
                return False
        return True

    # -- stopping -----------------------------------------------------------------------------

    def _is_ours(self, proc: _Proc) -> bool:
        """Is pid still the process we started? (stale pid files after a reboot are safe)"""
        if proc.popen is not None and proc.popen.poll() is not None:
            return False
        argv = _proc_cmdline(proc.pid)
        if not argv or not _proc_alive(proc.pid):
            return False
        expected = self._BINARY_NAMES.get(proc.name, proc.name)
        return Path(argv[0]).name == expected and any(str(self.state_dir) in a for a in argv[1:])

    def _known_procs(self) -> list[_Proc]:
        """Processes from memory, state.json and pid files (a crashed `up` may leave only pids)."""
        procs = {p.pid: p for p in self._procs}
        for name in COMPONENTS:
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.pid_dir / f"{name}.pid").read_text().split()[0])
                procs.setdefault(pid, _Proc(name=name, pid=pid, binary=""))
        return list(procs.values())

    def _stop_processes(self, term_timeout: float = 15.0) -> None:
        self._stop_real_node()  # first: its pods, kubelet, containerd, shims, mounts, cgroups
        procs = [p for p in self._known_procs() if self._is_ours(p)]
        # Everything but etcd first, so the apiserver can shut down cleanly; then etcd.
        for batch in (
            [p for p in procs if p.name != "etcd"],
            [p for p in procs if p.name == "etcd"],
        ):
            self._signal_all(batch, signal.SIGTERM)
            if self._wait_gone(batch, term_timeout):
                continue
            survivors = [p for p in batch if self._is_ours(p)]
            self._log(f"SIGKILL after {term_timeout:.0f}s: {[p.name for p in survivors]}")
            self._signal_all(survivors, signal.SIGKILL)
            self._wait_gone(survivors, 5.0)
        for p in self._procs:
            if p.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(timeout=1)  # reap
        self._procs = []

    @staticmethod
    def _signal_all(procs: Sequence[_Proc], sig: signal.Signals) -> None:
        for p in procs:
            try:
                # Each child leads its own process group (start_new_session): signal the group.
                if os.getpgid(p.pid) == p.pid:
                    os.killpg(p.pid, sig)
                else:
                    os.kill(p.pid, sig)
            except ProcessLookupError:
                pass

    def _wait_gone(self, procs: Sequence[_Proc], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for p in procs:
                if p.popen is not None:
                    p.popen.poll()  # reap our own children so they do not linger as zombies
            if not any(self._is_ours(p) for p in procs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    # -- state ----------------------------------------------------------------------------------

    def _lock(self) -> Any:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.state_dir / ".lock", "w")  # noqa: SIM115 (closed by the caller)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ControlPlaneError(f"{self.state_dir} is locked by another start/stop") from None
        return f

    def _save_state(self, phase: str) -> None:
        state = {
            "phase": phase,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ca_cert": str(self.ca_cert_path),
            "detached": self.detach,
            "owner_pid": os.getpid(),
            "processes": [p.to_json() for p in self._procs],
            "real_node": self.real_node.name if self.real_node is not None else None,
            "real_node_reason": self.real_node_reason,
        }
        _write(self.state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n", 0o644)

    def _load_state(self) -> None:
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        self.server = state.get("server", "")
        if state.get("real_node"):
            self.real_node = realnode.RealNode(self.state_dir)
        self.real_node_reason = state.get("real_node_reason")
        self._procs = [
            _Proc(name=p["name"], pid=int(p["pid"]), binary=p.get("binary", ""))
            for p in state.get("processes", [])
        ]

    def _clean_state_dir(self) -> None:
        names = (
            "etcd",
            "pki",
            "logs",
            "pids",
            "kubeconfigs",
            "kwok",
            "helm",
            "kubectl-cache",
            "node",
        )
        for name in (*names, STATE_FILE):
            path = self.state_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.kubeconfig.unlink(missing_ok=True)

    def _remove_state(self, *, keep_logs: bool) -> None:
        d = self.state_dir
        if not d.exists():
            return
        if not (d / MARKER_FILE).exists() and not (d / STATE_FILE).exists():
            # Not created by us (or already cleaned): only drop our lock file.
            (d / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                d.rmdir()
            return
        if keep_logs:
            for child in d.iterdir():
                if child.name != "logs":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(d, ignore_errors=True)
        self.server = ""

    # -- helpers --------------------------------------------------------------------------------

    def _run(
        self,
        cmd: list[str],
        *,
        input: str | None,
        check: bool,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def _log(self, message: str) -> None:
        if self._log_enabled:
            since = f"[{time.monotonic() - self._t0:5.1f}s] " if self._t0 else ""
            print(f"controlplane: {since}{message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=".cluster", help="state directory (default: .cluster)")
    parser.add_argument("--nodes", type=int, default=2, help="fake kwok nodes to create (up)")
    parser.add_argument("--timeout", type=float, default=90.0, help="startup timeout, seconds")
    parser.add_argument(
        "--real-node",
        choices=["auto", "on", "off"],
        default=os.environ.get(REAL_NODE_ENV, "auto"),
        help="start a real kubelet+containerd node: auto (when the machine allows it), on "
        f"(fail without it), off; default ${REAL_NODE_ENV} or auto",
    )
    args = parser.parse_args(argv)
    real_node: bool | str = {"auto": "auto", "on": True, "off": False}.get(args.real_node, "auto")

    cp = ControlPlane(
        args.dir,
        nodes=args.nodes,
        detach=True,
        startup_timeout=args.timeout,
        log=True,
        real_node=real_node,
    )
    try:
        if args.command == "up":
            if cp.is_running():
                print(f"controlplane: already running at {cp.server}", file=sys.stderr)
            else:
                cp.start()
            print(f"controlplane: {cp.real_node_status()}", file=sys.stderr)
            print(f"export KUBECONFIG={cp.kubeconfig}")
        elif args.command == "down":
            existed = cp.state_dir.exists()
            cp.stop()
            if not existed:
                done = f"nothing to stop in {cp.state_dir}"
            elif cp.state_dir.exists():
                done = f"left {cp.state_dir} in place: controlplane.py did not create it"
            else:
                done = f"stopped; removed {cp.state_dir}"
            print(f"controlplane: {done}", file=sys.stderr)
        else:
            running = cp.is_running()
            print(f"{'running' if running else 'not running'}: {cp.state_dir} {cp.server}")
            return 0 if running else 1
    except (ControlPlaneError, KubectlError) as exc:
        print(f"controlplane: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
