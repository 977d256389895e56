"""The "floor" webhooks: what the least a Go or an aiohttp webhook costs per AdmissionReview,
next to which our webhook is measured.

* :func:`build_go_tools`: builds ``bench/floor/server`` (the Go floor) and
  ``bench/floor/loadgen`` (the load generator) once per source change, into the cache.
* :class:`FloorServer`: one floor process (``"go"`` or ``"aiohttp"``) on 127.0.0.1, serving a
  static JSON patch, optionally pinned to CPUs.
* :func:`expected_patch`: the operations our own engine produces for a pod under the
  benchmark's policy (``bench_webhook.policy_manifest``), from our real webhook code, so that
  a floor answers byte for byte what we answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import orjson

REPO = Path(__file__).resolve().parents[1]
FLOOR = REPO / "bench" / "floor"
DEFAULT_NAMESPACE = "bench-service"
FLOOR_PATH = "/mutate-pods"

__all__ = [
    "FLOOR_PATH",
    "FloorServer",
    "build_go_tools",
    "cache_dir",
    "expected_patch",
    "go_binary",
    "pinned",
]


# ---------------------------------------------------------------------------------------------
# Building the Go tools
# ---------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$GOMEMLIMIT_CACHE/bench`` or ``~/.cache/gomemlimit-operator/bench``, as build.sh."""
    root = os.environ.get("GOMEMLIMIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "gomemlimit-operator") / "bench"


def go_binary() -> str | None:
    """The ``go`` on PATH, else the usual install location; None if there is neither."""
    found = shutil.which("go")
    if found:
        return found
    fallback = Path("/usr/local/go/bin/go")
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


def _sources_digest(go: str) -> str:
    digest = hashlib.sha256()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest.update(version.encode())
    for path in sorted(FLOOR.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            digest.update(str(path.relative_to(FLOOR)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_go_tools() -> tuple[Path, Path]:
    """(server, loadgen) binaries, built with ``-trimpath`` into :func:`cache_dir` under names
    that carry a hash of the sources and the Go version: rebuilt only when either changes."""
    go = go_binary()
    if go is None:
        raise RuntimeError("the Go floor needs a Go toolchain (`go` on PATH or /usr/local/go)")
    tag = _sources_digest(go)
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",  # stdlib only: never download a toolchain or a module
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
    }
    binaries = []
    for tool in ("server", "loadgen"):
        target = out / f"floor-{tool}-{tag}"
        if not target.exists():
            partial = out / f".{target.name}.{os.getpid()}"
            result = subprocess.run(
                [go, "build", "-trimpath", "-o", str(partial), f"./{tool}"],
                cwd=FLOOR,
                env=env,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"go build ./{tool} failed:\n{result.stderr}")
            os.replace(partial, target)
            for old in out.glob(f"floor-{tool}-*"):  # earlier builds
                if old != target:
                    old.unlink(missing_ok=True)
        binaries.append(target)
    return binaries[0], binaries[1]


# ---------------------------------------------------------------------------------------------
# The patch our engine produces
# ---------------------------------------------------------------------------------------------


def expected_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch our webhook returns for ``pod`` being created under the benchmark's
    policy (``bench_webhook.policy_manifest()``, in a namespace labelled to match it): the
    operations of our real ``webhook.admit()``. The pod's namespace is
    ``metadata.namespace`` (``bench-service`` if it has none). Empty if we would not mutate.
    """
    from bench.bench_webhook import BENCH_LABEL, policy_manifest
    from gomemlimit_operator.core.api import parse_policy
    from gomemlimit_operator.core.policy_view import PolicyView
    from gomemlimit_operator.runtime.webhook import admit

    metadata = dict(pod.get("metadata") or {})
    namespace = str(metadata.get("namespace") or DEFAULT_NAMESPACE)
    metadata["namespace"] = namespace
    registry = PolicyView()
    registry.set_policy(parse_policy(policy_manifest()))
    registry.set_namespace(namespace, {BENCH_LABEL: "true"})
    admission = admit({**pod, "metadata": metadata}, registry=registry)
    return [dict(op) for op in admission.operations]


# ---------------------------------------------------------------------------------------------
# Floor servers
# ---------------------------------------------------------------------------------------------


def pinned(cpus: set[int] | None) -> Any:
    """A ``preexec_fn`` that pins the child to ``cpus`` (None: no pinning)."""
    if not cpus:
        return None
    chosen = set(cpus)

    def preexec() -> None:
        os.sched_setaffinity(0, chosen)

    return preexec


def wait_for_tls(port: int, timeout: float, alive: Any = None) -> None:
    """Until a TLS handshake with 127.0.0.1:``port`` succeeds (certificate not checked).
    ``alive()`` false ends the wait early with an error."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server on port {port} exited")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1.0) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing answered TLS on 127.0.0.1:{port} in {timeout:.0f}s ({last})")


class FloorServer:
    """One floor webhook process: ``with FloorServer("go", cert=..., key=..., patch=ops,
    port=p) as server: ... server.url ...``.

    It answers every Pod CREATE AdmissionReview POSTed to any path with ``patch`` (sent as
    ``orjson.dumps(patch)``, the bytes our webhook sends for the same operations) and anything
    else with allowed. ``cpus`` pins the process to those CPUs (and sets ``GOMAXPROCS`` to
    their number for Go).
    """

    def __init__(
        self,
        kind: Literal["go", "aiohttp"],
        *,
        cert: Path,
        key: Path,
        patch: list[dict[str, Any]],
        port: int,
        cpus: set[int] | None = None,
    ) -> None:
        if kind not in ("go", "aiohttp"):
            raise ValueError(f"unknown floor kind {kind!r}")
        self.kind = kind
        self.cert = Path(cert)
        self.key = Path(key)
        self.patch = list(patch)
        self.port = port
        self.cpus = set(cpus) if cpus else None
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{FLOOR_PATH}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the floor server is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self, patch_file: Path) -> list[str]:
        if self.kind == "go":
            server, _ = build_go_tools()
            return [
                str(server),
                "-addr",
                f"127.0.0.1:{self.port}",
                "-cert",
                str(self.cert),
                "-key",
                str(self.key),
                "-patch",
                str(patch_file),
            ]
        return [
            sys.executable,
            "-m",
            "bench.floor_aiohttp",
            "--port",
            str(self.port),
            "--cert",
            str(self.cert),
            "--key",
            str(self.key),
            "--patch",
            str(patch_file),
        ]

    def start(self, timeout: float = 30.0) -> FloorServer:
        """Start the process and wait until it completes a TLS handshake."""
        if self.running:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix=f"floor-{self.kind}-"))
        patch_file = self._dir / "patch.json"
        patch_file.write_bytes(orjson.dumps(self.patch))
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if self.kind == "go" and self.cpus:
            env["GOMAXPROCS"] = str(len(self.cpus))
        command = self.command(patch_file)
        self._log = (self._dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            preexec_fn=pinned(self.cpus),
        )
        try:
            wait_for_tls(self.port, timeout, alive=lambda: self.running)
        except (RuntimeError, TimeoutError) as exc:
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"{self.kind} floor did not start: {exc}\n{log}") from None
        return self

    def log_text(self) -> str:
        if self._dir is None or not (self._dir / "server.log").exists():
            return ""
        return (self._dir / "server.log").read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (SIGKILL if it does not exit in time), then remove its files."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)
            self._dir = None

    def __enter__(self) -> FloorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
