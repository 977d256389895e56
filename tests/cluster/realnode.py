"""A real node for the local control plane: a kubelet with containerd and runc, on 127.0.0.1.

kwok's fake nodes run no container. This node does: pods that select it (label
``gomemlimit.io/node=real``) and tolerate its taint (``gomemlimit.io/real-node=true:NoSchedule``)
run as real containers under real cgroup memory limits. Use :func:`placement` in a pod spec.

What runs, all with state under ``<cluster dir>/node``:

* **containerd** (Debian's package, see ``host-deps.sh``) with ``root``, ``state``, the gRPC
  socket, runc's root, the CNI dirs and the ``opt`` dir moved there, and
  ``restrict_oom_score_adj = true`` (this sandbox lacks CAP_SYS_RESOURCE: without it every
  sandbox fails with ``can't get final child's PID from pipe: EOF``);
* **the kubelet**, built from the pinned ``k8s.io/kubernetes`` module (``build.sh``), with the
  cgroupfs driver under its own cgroup root ``/gomemlimit-<id>`` (so two clusters on one
  machine never share ``kubepods``), every port on 127.0.0.1, and its root, pod logs and
  volume plugin dirs under the node dir.

No CNI: only ``hostNetwork: true`` pods can run there. The sandbox image
``gomemlimit.local/pause:1`` is a static Go program (``pause/``) packed by ``images.py``.

:meth:`RealNode.teardown` leaves nothing: containers killed by PID (from the node's cgroups),
tasks and containers deleted through containerd so its shims exit, kubelet and containerd
stopped by PID, leftover shims stopped by PID (their sockets removed), every mount under the
cluster dir unmounted, the cgroups removed and the kubelet's ``/var/log/containers`` links
that point into the cluster dir deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PAUSE_SRC = HERE / "pause"

NODE_NAME = "real-node"
NODE_LABEL_KEY = "gomemlimit.io/node"
NODE_LABEL_VALUE = "real"
TAINT_KEY = "gomemlimit.io/real-node"
TAINT_VALUE = "true"
PAUSE_REPOSITORY = "gomemlimit.local/pause"
PAUSE_IMAGE = f"{PAUSE_REPOSITORY}:1"
SHIM_NAMES = ("containerd-shim-runc-v2", "containerd-shim")
CGROUP_FS = Path("/sys/fs/cgroup")
SHIM_SOCKET_DIR = Path("/run/containerd/s")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CI_ENV = "CI"

__all__ = [
    "NODE_LABEL_KEY",
    "NODE_LABEL_VALUE",
    "NODE_NAME",
    "PAUSE_IMAGE",
    "TAINT_KEY",
    "RealNode",
    "ci_requires_real_node",
    "placement",
    "runtime_tools",
    "unavailable_reason",
]


def placement() -> dict[str, Any]:
    """The pod-spec fields that put a pod on the real node (and only there)."""
    return {
        "nodeSelector": {NODE_LABEL_KEY: NODE_LABEL_VALUE},
        "tolerations": [
            {"key": TAINT_KEY, "operator": "Equal", "value": TAINT_VALUE, "effect": "NoSchedule"}
        ],
    }


def ci_requires_real_node() -> bool:
    """In CI (``CI`` set to anything but empty/0/false) a missing real node is a failure."""
    return os.environ.get(CI_ENV, "").lower() not in ("", "0", "false", "no")


def runtime_tools() -> dict[str, str | None]:
    """containerd, ctr and runc on PATH (None when missing)."""
    return {name: shutil.which(name) for name in ("containerd", "ctr", "runc")}


def _cgroup_v1_hierarchies() -> list[Path]:
    """Mount points of the cgroup v1 hierarchies (from /proc/self/mountinfo)."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" - ", 1)
            if len(fields) == 2 and fields[1].split()[0] == "cgroup":
                found.append(Path(_unescape(fields[0].split()[4])))
    return found


def _cgroup_v2() -> bool:
    return (CGROUP_FS / "cgroup.controllers").exists()


def unavailable_reason(kubelet: Path) -> str | None:
    """Why this machine cannot run the real node, in one line; None if it can (probably).

    Checks: Linux, root, a kubelet binary, containerd/ctr/runc on PATH, a writable memory
    cgroup. Whether containers really start is only known once one did (``start``).
    """
    if not sys.platform.startswith("linux"):
        return f"the real node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the real node needs root (containerd and the kubelet manage cgroups and mounts)"
    if not os.access(kubelet, os.X_OK):
        return f"no kubelet at {kubelet} (run: bash tests/cluster/build.sh)"
    missing = [name for name, path in runtime_tools().items() if path is None]
    if missing:
        return (
            f"{', '.join(missing)} not on PATH "
            "(run: bash tests/cluster/host-deps.sh, which installs Debian's containerd and runc)"
        )
    if _cgroup_v2():
        if not os.access(CGROUP_FS, os.W_OK):
            return f"{CGROUP_FS} (cgroup v2) is not writable"
    else:
        memory = [h for h in _cgroup_v1_hierarchies() if "memory" in h.name.split(",")]
        if not memory:
            return "no cgroup v1 memory controller is mounted"
        if not os.access(memory[0], os.W_OK):
            return f"{memory[0]} is not writable"
    return None


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def proc_cmdline(pid: int) -> list[str]:
    """argv of pid ([] if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _wait_dead(pids: Iterable[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending:
        pending = {p for p in pending if proc_alive(p)}
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


_MNT_DETACH = 2


def _umount(path: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(path.encode(), 0) == 0:
        return True
    return bool(libc.umount2(path.encode(), _MNT_DETACH) == 0)


class RealNode:
    """The real node of the cluster in ``cluster_dir`` (paths, config, start helpers, teardown).

    ``ControlPlane`` drives it: it spawns ``containerd`` and ``kubelet`` with the argv from
    :meth:`containerd_argv` / :meth:`kubelet_argv` (so they get pid files and the same
    die-with-parent handling as the other components) and calls :meth:`teardown` first when
    stopping. Everything here is derived from ``cluster_dir``, so a later ``down`` can tear
    down a node started by an earlier ``up``.
    """

    def __init__(self, cluster_dir: Path, *, log: Callable[[str], None] | None = None) -> None:
        self.cluster_dir = Path(cluster_dir).resolve()
        self.dir = self.cluster_dir / "node"
        self.containerd_dir = self.dir / "containerd"
        self.containerd_sock = self.containerd_dir / "containerd.sock"
        self.containerd_config = self.dir / "containerd.toml"
        self.kubelet_dir = self.dir / "kubelet"
        self.kubelet_config = self.dir / "kubelet.yaml"
        self.kubelet_kubeconfig = self.dir / "kubelet.kubeconfig"
        self.pod_logs_dir = self.dir / "pod-logs"
        digest = hashlib.sha256(str(self.cluster_dir).encode()).hexdigest()[:10]
        self.cgroup_name = f"gomemlimit-{digest}"
        self.name = NODE_NAME
        self._log = log or (lambda _message: None)
        tools = runtime_tools()
        self.ctr_path = tools["ctr"] or "ctr"
        self.kubelet_port = 0
        self.healthz_port = 0

    # -- configuration ------------------------------------------------------------------------

    def write_configs(
        self,
        *,
        ca_cert: Path,
        kubeconfig_text: str,
        serving_cert: Path,
        serving_key: Path,
        kubelet_port: int,
        healthz_port: int,
    ) -> None:
        for sub in ("containerd", "kubelet", "pod-logs", "cni/bin", "cni/net.d", "volume-plugins"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.kubelet_port, self.healthz_port = kubelet_port, healthz_port
        c = self.containerd_dir
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        runc = f"{cri[:-1]}.containerd.runtimes.runc]"
        toml = f"""# Written by tests/cluster/realnode.py: everything lives under {self.dir}
version = 2
root = "{c / "root"}"
state = "{c / "state"}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{self.containerd_sock}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

{cri}
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  netns_mounts_under_state_dir = true

{cri[:-1]}.cni]
  bin_dir = "{self.dir / "cni" / "bin"}"
  conf_dir = "{self.dir / "cni" / "net.d"}"

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{runc}
  runtime_type = "io.containerd.runc.v2"

{runc[:-1]}.options]
  Root = "{c / "runc"}"
  SystemdCgroup = false

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"
"""
        self.containerd_config.write_text(toml)
        # containerd reports NetworkReady (and so the node Ready) only once a CNI network config
        # loads. This loopback-only one is never called for hostNetwork pods, the only pods
        # this node can run: others fail with "failed to find network info".
        conflist = {
            "cniVersion": "0.4.0",
            "name": "gomemlimit-loopback",
            "plugins": [{"type": "loopback"}],
        }
        (self.dir / "cni" / "net.d" / "10-loopback.conflist").write_text(json.dumps(conflist))
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_name}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_sock}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "tlsCertFile": str(serving_cert),
            "tlsPrivateKeyFile": str(serving_key),
            "enforceNodeAllocatable": [],
            "evictionHard": {},
            "localStorageCapacityIsolation": False,
            "resolvConf": "",
            "podLogsDir": str(self.pod_logs_dir),
            "volumePluginDir": str(self.dir / "volume-plugins"),
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 30,
            "registerNode": True,
            "registerWithTaints": [
                {"key": TAINT_KEY, "value": TAINT_VALUE, "effect": "NoSchedule"}
            ],
        }
        self.kubelet_config.write_text(yaml.safe_dump(kubelet, sort_keys=False))
        self.kubelet_kubeconfig.write_text(kubeconfig_text)
        self.kubelet_kubeconfig.chmod(0o600)

    def containerd_argv(self) -> list[str]:
        return ["--config", str(self.containerd_config), "--log-level", "warn"]

    def kubelet_argv(self) -> list[str]:
        return [
            f"--config={self.kubelet_config}",
            f"--kubeconfig={self.kubelet_kubeconfig}",
            f"--root-dir={self.kubelet_dir}",
            f"--cert-dir={self.kubelet_dir / 'pki'}",
            f"--hostname-override={self.name}",
            "--node-ip=127.0.0.1",
            f"--node-labels={NODE_LABEL_KEY}={NODE_LABEL_VALUE}",
            # cAdvisor's own containerd client (a cAdvisor flag the kubelet still registers):
            # without our socket it cannot name the containers, and /metrics/cadvisor has no
            # container, pod, namespace or image labels for them.
            f"--containerd={self.containerd_sock}",
            "--v=1",
        ]

    # -- cgroups ------------------------------------------------------------------------------

    def cgroup_dirs(self) -> list[Path]:
        """The node's cgroup root in every hierarchy (v1), or the one v2 dir."""
        if _cgroup_v2():
            return [CGROUP_FS / self.cgroup_name]
        return [h / self.cgroup_name for h in _cgroup_v1_hierarchies()]

    def memory_cgroup(self) -> Path:
        if _cgroup_v2():
            return CGROUP_FS / self.cgroup_name
        for h in _cgroup_v1_hierarchies():
            if "memory" in h.name.split(","):
                return h / self.cgroup_name
        raise RuntimeError("no memory cgroup hierarchy")

    def create_cgroups(self) -> None:
        """The kubelet refuses a cgroupRoot that does not exist in every hierarchy."""
        for d in self.cgroup_dirs():
            d.mkdir(exist_ok=True)
            if "cpuset" in d.parent.name.split(","):
                # v1 cpuset children start empty: inherit the parent's CPUs and memory nodes.
                for name in ("cpuset.cpus", "cpuset.mems"):
                    src, dst = d.parent / name, d / name
                    if src.exists() and not dst.read_text().strip():
                        dst.write_text(src.read_text())

    def pod_cgroup(self, pod_uid: str) -> Path | None:
        """The memory cgroup of a pod on this node (None once the kubelet removed it)."""
        root = self.memory_cgroup() / "kubepods"
        for candidate in (
            root / f"pod{pod_uid}",
            root / "burstable" / f"pod{pod_uid}",
            root / "besteffort" / f"pod{pod_uid}",
        ):
            if candidate.is_dir():
                return candidate
        return None

    def container_cgroup(self, pod_uid: str, container_id: str) -> Path | None:
        pod = self.pod_cgroup(pod_uid)
        if pod is None:
            return None
        cid = container_id.rpartition("://")[2]
        path = pod / cid
        return path if path.is_dir() else None

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.cgroup_dirs():
            if not top.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError, ValueError):
                        text = (Path(dirpath) / "cgroup.procs").read_text()
                        pids.update(int(p) for p in text.split())
        return pids

    def _remove_cgroups(self) -> list[str]:
        left: list[str] = []
        for top in self.cgroup_dirs():
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(
                os.walk(top), key=lambda entry: entry[0].count("/"), reverse=True
            ):
                try:
                    os.rmdir(dirpath)
                except OSError as exc:
                    left.append(f"{dirpath}: {exc.strerror}")
        return left

    # -- containerd ---------------------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        cmd = [self.ctr_path, "--address", str(self.containerd_sock), "-n", "k8s.io", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def containerd_ready(self) -> bool:
        if not self.containerd_sock.exists():
            return False
        return self.ctr("version", timeout=5).returncode == 0

    def import_image(self, archive: Path) -> str:
        from .images import import_image

        return import_image(archive, ctr=self.ctr_path, address=self.containerd_sock)

    def build_pause_image(self) -> Path:
        from .images import ImageFile, build_image, go_build

        binary = go_build(PAUSE_SRC, self.dir / "build" / "pause")
        image = build_image(
            self.dir / "build" / "pause.tar",
            repository=PAUSE_REPOSITORY,
            tag="1",
            files=[ImageFile("/pause", binary, mode=0o755)],
            entrypoint=["/pause"],
            user="65535:65535",
        )
        return image.path

    def shims(self) -> list[int]:
        """PIDs of containerd shims that serve this node's containerd (by their -address)."""
        found: list[int] = []
        sock = str(self.containerd_sock)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            argv = proc_cmdline(int(entry.name))
            if argv and Path(argv[0]).name in SHIM_NAMES and sock in argv:
                found.append(int(entry.name))
        return found

    @staticmethod
    def _listening_sockets(pid: int) -> list[Path]:
        """Unix socket paths that pid has open (its ttrpc socket in /run/containerd/s)."""
        inodes: set[str] = set()
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        paths: list[Path] = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith("/"):
                    paths.append(Path(parts[7].lstrip("@")))
        return paths

    # -- teardown -----------------------------------------------------------------------------

    def mounts(self) -> list[str]:
        """Mount points under the cluster dir, deepest first."""
        prefix = str(self.cluster_dir) + "/"
        found: list[str] = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = _unescape(line.split()[4])
                if point.startswith(prefix) or point == str(self.cluster_dir):
                    found.append(point)
        return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)

    def leftovers(self) -> list[str]:
        """What a teardown must not leave: processes, mounts, cgroups, shim sockets, links."""
        left = [f"process {pid}: {' '.join(proc_cmdline(pid))}" for pid in self.shims()]
        left += [f"process {pid} in the node's cgroups" for pid in sorted(self._cgroup_pids())]
        left += [f"mount {m}" for m in self.mounts()]
        left += [f"cgroup {d}" for d in self.cgroup_dirs() if d.exists()]
        left += [f"log link {link}" for link in self._log_links()]
        return left

    def _log_links(self) -> list[Path]:
        links: list[Path] = []
        with contextlib.suppress(OSError):
            for link in CONTAINER_LOG_LINKS.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(str(self.dir) + "/"):
                        links.append(link)
        return links

    def teardown(
        self,
        *,
        kubelet: Iterable[int] = (),
        containerd: Iterable[int] = (),
        stop: Callable[[list[int], float], None] | None = None,
    ) -> list[str]:
        """Stop the node and remove all it left outside plain files; returns what is left.

        ``kubelet``/``containerd`` are the verified PIDs of those processes (the caller checked
        their cmdline). ``stop(pids, timeout)`` sends SIGTERM, then SIGKILL after timeout.
        """
        stop = stop or _term_then_kill
        kubelet, containerd = list(kubelet), list(containerd)
        if kubelet:
            stop(kubelet, 10.0)
        # The containers: every process in the node's cgroups, by PID.
        for _ in range(3):
            pids = self._cgroup_pids()
            if not pids:
                break
            for pid in pids:
                _kill(pid, signal.SIGKILL)
            _wait_dead(pids, 5.0)
        # Delete tasks and containers through containerd: their shims then exit by themselves.
        if containerd and self.containerd_ready():
            listed = self.ctr("containers", "list", "--quiet", timeout=10)
            ids = listed.stdout.split() if listed.returncode == 0 else []
            for cid in ids:
                self.ctr("tasks", "delete", "--force", cid, timeout=10)
            for cid in ids:
                self.ctr("containers", "delete", cid, timeout=10)
        if containerd:
            stop(containerd, 10.0)
        shims = self.shims()
        sockets = [s for pid in shims for s in self._listening_sockets(pid)]
        for pid in shims:
            _kill(pid, signal.SIGKILL)
        _wait_dead(shims, 5.0)
        for sock in sockets:
            if SHIM_SOCKET_DIR in sock.parents:
                sock.unlink(missing_ok=True)
        for point in self.mounts():
            if not _umount(point):
                self._log(f"could not unmount {point}")
        left = self._remove_cgroups()
        for link in self._log_links():
            link.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            SHIM_SOCKET_DIR.rmdir()  # only if empty
        with contextlib.suppress(OSError):
            SHIM_SOCKET_DIR.parent.rmdir()
        return [*left, *self.leftovers()]


def _term_then_kill(pids: list[int], timeout: float) -> None:
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    if not _wait_dead(pids, timeout):
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        _wait_dead(pids, 5.0)


def node_summary(node: Mapping[str, Any]) -> str:
    """One line about a Node object: Ready, kubelet version, taints, runtime."""
    status = node.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    info = status.get("nodeInfo") or {}
    return (
        f"{node['metadata']['name']}: Ready={conditions.get('Ready')}, "
        f"kubelet {info.get('kubeletVersion')}, {info.get('containerRuntimeVersion')}"
    )
