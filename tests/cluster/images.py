"""Container images without a registry: build a docker-archive tarball from files, import it.

No registry is reachable from the local cluster, so images are built here, from files (static
Go binaries first), and imported straight into the real node's containerd::

    from tests.cluster.images import ImageFile, build_image, go_build, import_image

    binary = go_build(REPO / "tests" / "goworkload", tmp / "goworkload")
    image = build_image(
        tmp / "goworkload.tar",
        repository="gomemlimit.local/goworkload",
        files=[ImageFile("/goworkload", binary)],
        entrypoint=["/goworkload"],
        user="65532:65532",
        env={"GODEBUG": "madvdontneed=1"},
    )
    import_image(image, ctr=Path("/usr/bin/ctr"), address=node.containerd_sock)
    # Pods then use image.ref with imagePullPolicy: Never.

The archive is the ``docker save`` layout that ``ctr images import`` reads: ``manifest.json``,
one image config JSON (named by its digest) and one uncompressed layer tar per image. Everything
is deterministic: entries sorted, mtime 0, owner root unless given, so the same files give the
same image ID. The tag defaults to the first 12 hex digits of the image ID: rebuilding changed
files gives a new tag, and a pod can never run a stale image by accident.

Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = [
    "BuiltImage",
    "ImageError",
    "ImageFile",
    "build_image",
    "go_build",
    "go_platform",
    "import_image",
    "layer_tar",
]


class ImageError(RuntimeError):
    """An image could not be built or imported; the message has the tool's output."""


@dataclass(frozen=True)
class ImageFile:
    """One file in the image: ``path`` inside the image, content from ``source``.

    ``source`` is a file on disk or the bytes themselves. Parent directories are added
    (0755, root). ``mode`` defaults to 0755 for files on disk that are executable, else 0644.
    """

    path: str
    source: Path | bytes
    mode: int | None = None
    uid: int = 0
    gid: int = 0

    def data(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else Path(self.source).read_bytes()

    def file_mode(self) -> int:
        if self.mode is not None:
            return self.mode
        if isinstance(self.source, Path) and os.access(self.source, os.X_OK):
            return 0o755
        return 0o644


@dataclass(frozen=True)
class BuiltImage:
    """A built docker-archive: ``ref`` (``repository:tag``) is what pods name."""

    path: Path
    repository: str
    tag: str
    image_id: str  # "sha256:<config digest>"
    layer_diff_id: str  # "sha256:<uncompressed layer digest>" of the files layer (the last)
    config: Mapping[str, object] = field(repr=False)
    tags: tuple[str, ...] = ()  # every tag in the archive; ``tag`` is the first

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{t}" for t in (self.tags or (self.tag,)))

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def go_platform() -> tuple[str, str]:
    """(os, architecture) in OCI/Go terms for this machine, e.g. ("linux", "amd64")."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}.get(
        machine, machine
    )
    return "linux", arch


def _tarinfo(
    name: str, *, kind: bytes, mode: int, size: int = 0, uid: int = 0, gid: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def layer_tar(files: Sequence[ImageFile], *, directories: Mapping[str, int] | None = None) -> bytes:
    """One uncompressed layer: ``files``, their parent dirs, and ``directories`` (path -> mode).

    Paths are stored relative (``goworkload``, ``etc/passwd``), sorted, with mtime 0.
    """
    dirs: dict[str, int] = {}
    entries: dict[str, ImageFile] = {}
    for f in files:
        path = PurePosixPath("/", f.path)
        if path == PurePosixPath("/") or ".." in path.parts:
            raise ImageError(f"bad path in image: {f.path!r}")
        rel = str(path.relative_to("/"))
        if rel in entries:
            raise ImageError(f"{f.path} is in the image twice")
        entries[rel] = f
        for parent in path.parents:
            if parent != PurePosixPath("/"):
                dirs.setdefault(str(parent.relative_to("/")), 0o755)
    for d, mode in (directories or {}).items():
        dirs[str(PurePosixPath("/", d).relative_to("/"))] = mode
    clash = set(dirs) & set(entries)
    if clash:
        raise ImageError(f"both a file and a directory: {sorted(clash)}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted([*dirs, *entries]):
            if name in dirs:
                tar.addfile(_tarinfo(name, kind=tarfile.DIRTYPE, mode=dirs[name]))
            else:
                f = entries[name]
                data = f.data()
                info = _tarinfo(
                    name,
                    kind=tarfile.REGTYPE,
                    mode=f.file_mode(),
                    size=len(data),
                    uid=f.uid,
                    gid=f.gid,
                )
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(
    output: Path,
    *,
    repository: str,
    files: Sequence[ImageFile],
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = "",
    env: Mapping[str, str] | None = None,
    workdir: str = "/",
    labels: Mapping[str, str] | None = None,
    tag: str | None = None,
    layers: Sequence[Path] = (),
    tag_by_id: bool = False,
    exposed_ports: Sequence[str] = (),
) -> BuiltImage:
    """Write a docker-archive to ``output`` and describe it.

    ``user`` is the OCI ``User`` ("65532:65532", "0", or "" for root). ``env`` is added to a
    default ``PATH`` (an ``env`` PATH replaces it). A ``/tmp`` (1777) is always added. ``tag``
    defaults to the image ID's first 12 hex digits; with ``tag_by_id`` the archive carries
    both. ``layers`` are ready uncompressed layer tars (a root filesystem, say), stacked below
    the layer made from ``files``. ``exposed_ports`` are OCI ``ExposedPorts`` ("9443/tcp").
    """
    if not entrypoint:
        raise ImageError("an image needs an entrypoint")
    layer = layer_tar(files, directories={"tmp": 0o1777})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    below = [(_file_digest(p), p) for p in layers]
    os_name, arch = go_platform()
    environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})}
    config: dict[str, object] = {
        "architecture": arch,
        "os": os_name,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": list(entrypoint),
            "Cmd": list(cmd),
            "Env": [f"{k}={v}" for k, v in environment.items()],
            "User": user,
            "WorkingDir": workdir,
            "Labels": dict(labels or {}),
            **({"ExposedPorts": {p: {} for p in exposed_ports}} if exposed_ports else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [*(d for d, _ in below), diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/cluster/images.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    tags = [tag or config_digest[:12]]
    if tag and tag_by_id and config_digest[:12] != tag:
        tags.append(config_digest[:12])
    layer_name = f"{diff_id.removeprefix('sha256:')}/layer.tar"
    below_names = [f"{d.removeprefix('sha256:')}/layer.tar" for d, _ in below]
    manifest = [
        {
            "Config": f"{config_digest}.json",
            "RepoTags": [f"{repository}:{t}" for t in tags],
            "Layers": [*below_names, layer_name],
        }
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()
        for name, (_, path) in zip(below_names, below, strict=True):
            if name in written:
                continue  # the same layer twice in the stack is stored once
            written.add(name)
            tar.addfile(_tarinfo(name.split("/")[0], kind=tarfile.DIRTYPE, mode=0o755))
            with path.open("rb") as stream:
                info = _tarinfo(name, kind=tarfile.REGTYPE, mode=0o644, size=path.stat().st_size)
                tar.addfile(info, stream)
        members = [
            (f"{config_digest}.json", config_bytes),
            *([] if layer_name in written else [(layer_name, layer)]),
            ("manifest.json", json.dumps(manifest, separators=(",", ":")).encode()),
        ]
        if layer_name not in written:
            tar.addfile(_tarinfo(layer_name.split("/")[0], kind=tarfile.DIRTYPE, mode=0o755))
        for name, data in members:
            tar.addfile(
                _tarinfo(name, kind=tarfile.REGTYPE, mode=0o644, size=len(data)), io.BytesIO(data)
            )
    tmp.replace(output)
    return BuiltImage(
        path=output,
        repository=repository,
        tag=tags[0],
        image_id=f"sha256:{config_digest}",
        layer_diff_id=diff_id,
        config=config,
        tags=tuple(tags),
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def go_build(module_dir: Path, output: Path, *, package: str = ".", timeout: float = 900.0) -> Path:
    """``go build`` a static binary (CGO_ENABLED=0, -trimpath, no VCS stamp, local toolchain).

    Warm Go build caches make this about a second. Raises ImageError with go's output.
    """
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-buildvcs=false",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(output), package]
    try:
        proc = subprocess.run(
            cmd,
            cwd=module_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise ImageError("no 'go' on PATH (Go >= 1.26 is required)") from None
    if proc.returncode != 0:
        raise ImageError(
            f"(cd {module_dir} && {' '.join(cmd)}) failed:\n{proc.stdout}{proc.stderr}"
        )
    return output


def import_image(
    image: BuiltImage | Path,
    *,
    ctr: Path | str,
    address: Path | str,
    namespace: str = "k8s.io",
    timeout: float = 120.0,
) -> str:
    """``ctr -n <namespace> images import`` the archive into the containerd at ``address``.

    ``k8s.io`` is the namespace the CRI plugin (the kubelet's view) uses. Returns ctr's output.
    """
    path = image.path if isinstance(image, BuiltImage) else image
    cmd = [str(ctr), "--address", str(address), "-n", namespace, "images", "import", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout
