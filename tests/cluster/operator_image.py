"""The operator's image, built without a registry and without a Docker daemon.

No registry is reachable (no ``python:3.11-slim`` pull), so the image is made from parts this
machine can fetch: a Debian bookworm root filesystem from ``debootstrap --variant=minbase``
(Debian's archive is reachable) and the project's wheel plus its runtime dependencies from
PyPI, installed by the base image's own Python in a chroot. ``images.build_image`` packs the
layers into a docker-archive, which ``ctr images import`` loads into the real node::

    from tests.cluster.operator_image import build_operator_image, import_operator_image

    image = build_operator_image()                    # cached; seconds when nothing changed
    image.ref            # "gomemlimit-operator:0.1.0" (the version from pyproject.toml)
    image.refs           # (that, "gomemlimit-operator:<image ID prefix>")
    import_operator_image(real_node, image)           # then pods use imagePullPolicy: Never

CLI: ``python -m tests.cluster.operator_image build [--force]`` (``make image``) prints the
archive path, the refs and the size.

Layers, bottom up (the Dockerfile builds the same layout with docker):

1. the base: minbase + ``python3`` (bookworm's 3.11) + ``ca-certificates``; no apt lists or
   caches, no docs, man pages or locales, no device nodes. The standard library's bytecode is
   recompiled with ``--invalidation-mode unchecked-hash``: layer entries have mtime 0, so
   timestamp-checked ``.pyc`` files would be stale and recompiled in memory at every start
   (they cannot be written: the root filesystem is read-only). Cached per key (below).
2. the app: a virtualenv at ``/opt/gomemlimit`` (no pip, no setuptools, no pip cache, no
   tests), bytecode compiled the same way.
3. ``/etc/passwd`` and ``/etc/group`` with the user ``gomemlimit`` 65532:65532, and ``/tmp``.

The image runs as ``65532:65532`` (numeric, so ``runAsNonRoot`` can check it), writes nothing
outside ``/tmp`` (``PYTHONDONTWRITEBYTECODE=1``, ``HOME=/tmp``), and starts
``/opt/gomemlimit/bin/gomemlimit operator``.

Cache, under ``${GOMEMLIMIT_CACHE:-~/.cache/gomemlimit-operator}/images/``:

- ``base-<suite>-<key>/rootfs.tar`` + ``info.json``: the key hashes the suite, mirror, package
  list and ``OPERATOR_BASE_REVISION`` from ``versions.env``, and this recipe's version;
- ``operator-<version>-<key>/image.tar`` + ``info.json``: keyed by the base, the sources
  (``pyproject.toml``, ``README.md``, ``operator/``), the pip version and this file;
- ``pip/`` the pinned pip wheel; ``pip-cache/`` pip's HTTP and wheel cache (outside the image);
- ``images.lock``: flock, concurrent builds wait for each other; ``../logs/image-*.log``.

Everything is built under ``images/.tmp-*`` and renamed into place when complete, so an
interrupted build never looks valid. Mounts under a build directory (debootstrap mounts
``proc`` and ``sys`` in its target) are unmounted by path, deepest first, even on failure.

Needs root (debootstrap and chroot) and ``debootstrap`` (``make host-deps`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .controlplane import cache_root, read_versions
from .images import BuiltImage, ImageError, ImageFile, build_image, import_image

if TYPE_CHECKING:
    from .realnode import RealNode

REPO = Path(__file__).resolve().parents[2]

# The image's contract; the Dockerfile states the same (tests/cluster/test_operator_image.py).
REPOSITORY = "gomemlimit-operator"
VENV = "/opt/gomemlimit"
UID = GID = 65532
USER = f"{UID}:{GID}"
USER_NAME = "gomemlimit"
ENTRYPOINT = (f"{VENV}/bin/gomemlimit",)
CMD = ("operator",)
WORKDIR = "/"
ENV: Mapping[str, str] = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
}
# 9443 webhook (TLS), 8080 /metrics, 8081 /healthz and /readyz
PORTS = ("9443/tcp", "8080/tcp", "8081/tcp")
SOURCE_URL = "https://github.com/gomemlimit/gomemlimit-operator"

# Bump when the recipe below changes what a key produces.
BASE_RECIPE = "1"
# Removed from the base root filesystem (relative paths; contents only where marked /*).
BASE_PRUNE = (
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
    "dev/*",
    "proc/*",
    "sys/*",
    "run/*",
    "tmp/*",
    "debootstrap",
)
# Removed from the virtualenv's site-packages: kubernetes' asyncio copy of the client (68 MiB
# with bytecode; nothing imports it) and dependencies' own tests.
APP_PRUNE = ("kubernetes/aio", "certifi/tests", "websocket/tests")
# Imported in the build root after pruning: the operator mode's dependencies load.
SMOKE_IMPORTS = "import kopf, kubernetes, gomemlimit_operator.runtime.app"
COMPILE = ("-m", "compileall", "-q", "-f", "--invalidation-mode", "unchecked-hash")

__all__ = [
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "REPOSITORY",
    "USER",
    "VENV",
    "BaseRootfs",
    "build_operator_image",
    "ensure_base",
    "image_size",
    "import_operator_image",
    "main",
    "operator_version",
]

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"operator-image: {line}", file=sys.stderr, flush=True)


def operator_version() -> str:
    """The version in pyproject.toml: the image's tag and its OCI version label."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _run(
    cmd: list[str], *, log_file: Path, timeout: float, env: Mapping[str, str] | None = None
) -> str:
    """Run ``cmd``, appending its output to ``log_file``; ImageError with the tail on failure."""
    with log_file.open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
                env=dict(env) if env is not None else None,
            )
        except FileNotFoundError:
            raise ImageError(f"{cmd[0]} not found (make host-deps installs debootstrap)") from None
        except subprocess.TimeoutExpired as exc:
            raise ImageError(
                f"{' '.join(cmd)} timed out after {timeout:.0f}s (log: {log_file})"
            ) from exc
        log.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise ImageError(f"{' '.join(cmd)} failed ({proc.returncode}); log {log_file}:\n{tail}")
    return proc.stdout


@contextlib.contextmanager
def _locked(cache: Path, log: Log) -> Iterator[None]:
    path = cache / "images" / "images.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another image build holds {path}; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or under ``root`` (from /proc/self/mountinfo), deepest first."""
    root = root.resolve()
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = Path(_unescape(line.split()[4]))
            if point == root or root in point.parents:
                found.append(point)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount everything under ``root``, deepest first; lazily when busy. Never raises."""
    for _ in range(3):
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


@contextlib.contextmanager
def _build_dir(cache: Path, name: str) -> Iterator[Path]:
    """A fresh ``images/.tmp-<name>-<pid>``; its mounts are undone and it is removed after."""
    tmp = cache / "images" / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        unmount_under(tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        unmount_under(tmp)
        if not mounts_under(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(root: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def dir_layer(root: Path, output: Path, *, under: str = "") -> str:
    """An uncompressed, deterministic layer tar of ``root`` (or only ``root/under``).

    Entries sorted, mtime 0, numeric owners kept, names empty; symlinks and hard links kept,
    device nodes, sockets and FIFOs skipped. Returns ``sha256:<digest>`` of the tar.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    start = root / under if under else root
    names: list[str] = []
    if under:  # the parents of ``under`` themselves
        parts = Path(under).parts
        names += [str(Path(*parts[: i + 1])) for i in range(len(parts) - 1)]
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            names.append(rel)
        names += [os.path.join(rel, f) if rel != "." else f for f in sorted(filenames)]
        # symlinked directories are listed in dirnames but not walked into
        names += [
            os.path.join(rel, d) if rel != "." else d
            for d in dirnames
            if os.path.islink(os.path.join(dirpath, d))
        ]
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(output, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(set(names)):
            path = root / name
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mode = st.st_mode & 0o7777
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_symlink():
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif path.is_dir():
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif path.is_file():
                if st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen[(st.st_dev, st.st_ino)]
                    tar.addfile(info)
                    continue
                seen[(st.st_dev, st.st_ino)] = name
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                with path.open("rb") as data:
                    tar.addfile(info, data)
    digest = hashlib.sha256()
    with output.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# --- the base -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseRootfs:
    """The cached base layer: ``tar`` (uncompressed rootfs), ``key``, ``info`` (packages...)."""

    tar: Path
    key: str
    info: Mapping[str, Any]


def _base_spec(versions: Mapping[str, str]) -> dict[str, Any]:
    return {
        "suite": versions["OPERATOR_BASE_SUITE"],
        "mirror": versions["OPERATOR_BASE_MIRROR"],
        "packages": sorted(versions["OPERATOR_BASE_PACKAGES"].split(",")),
        "revision": versions["OPERATOR_BASE_REVISION"],
        "recipe": BASE_RECIPE,
    }


def ensure_base(
    *, cache: Path | None = None, force: bool = False, log: Log = _stderr
) -> BaseRootfs:
    """The debootstrap base rootfs tar, built once per key (about a minute cold)."""
    cache = cache or cache_root()
    spec = _base_spec(read_versions())
    key = _key(spec)
    final = cache / "images" / f"base-{spec['suite']}-{key}"
    with _locked(cache, log):
        if not force and (final / "info.json").is_file() and (final / "rootfs.tar").is_file():
            return BaseRootfs(
                final / "rootfs.tar", key, json.loads((final / "info.json").read_text())
            )
        if os.geteuid() != 0:
            raise ImageError("building the base needs root (debootstrap and chroot)")
        if shutil.which("debootstrap") is None:
            raise ImageError("no debootstrap: run `make host-deps` (apt-get install debootstrap)")
        log_file = cache / "logs" / "image-base.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")
        t0 = time.monotonic()
        log(f"building the base: debootstrap --variant=minbase {spec['suite']} {spec['packages']}")
        with _build_dir(cache, f"base-{key}") as tmp:
            root = tmp / "root"
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(spec['packages'])}",
                    spec["suite"],
                    str(root),
                    spec["mirror"],
                ],
                log_file=log_file,
                timeout=900,
            )
            unmount_under(root)
            chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
            python = _run(
                ["chroot", str(root), "python3", "-c", "import sys; print(sys.version.split()[0])"],
                log_file=log_file,
                timeout=60,
                env=chroot_env,
            ).strip()
            packages = _run(
                ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}=${Version}\\n"],
                log_file=log_file,
                timeout=60,
                env=chroot_env,
            ).split()
            _prune(root, BASE_PRUNE)
            # Timestamp-checked bytecode is stale in a layer whose mtimes are 0: recompile it.
            minor = ".".join(python.split(".")[:2])
            _run(
                [
                    "chroot",
                    str(root),
                    "python3",
                    *COMPILE,
                    f"/usr/lib/python{minor}",
                    "/usr/lib/python3",
                ],
                log_file=log_file,
                timeout=600,
                env=chroot_env,
            )
            (root / "etc" / "resolv.conf").write_text("")  # the kubelet mounts its own
            (root / "etc" / "hostname").write_text("")
            staged = tmp / "out"
            staged.mkdir()
            digest = dir_layer(root, staged / "rootfs.tar")
            info = {
                **spec,
                "key": key,
                "diff_id": digest,
                "python": python,
                "dpkg": packages,
                "size_bytes": (staged / "rootfs.tar").stat().st_size,
                "build_seconds": round(time.monotonic() - t0, 1),
            }
            (staged / "info.json").write_text(json.dumps(info, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
        log(f"base ready in {time.monotonic() - t0:.0f}s: {final}/rootfs.tar (python {python})")
        return BaseRootfs(final / "rootfs.tar", key, info)


# --- the app --------------------------------------------------------------------------------


def _source_files() -> list[Path]:
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    for path in sorted((REPO / "operator").rglob("*")):
        rel = path.relative_to(REPO)
        if (
            path.is_file()
            and "__pycache__" not in rel.parts
            and not any(p.endswith(".egg-info") for p in rel.parts)
        ):
            files.append(path)
    return files


def _source_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _pip_wheel(cache: Path, version: str, log_file: Path) -> Path:
    directory = cache / "images" / "pip"
    found = sorted(directory.glob(f"pip-{version}-*.whl"))
    if found:
        return found[0]
    directory.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(directory),
            f"pip=={version}",
        ],
        log_file=log_file,
        timeout=300,
    )
    found = sorted(directory.glob(f"pip-{version}-*.whl"))
    if not found:
        raise ImageError(f"pip download pip=={version} left no wheel in {directory}")
    return found[0]


def _project_wheel(files: list[Path], tmp: Path, log_file: Path) -> Path:
    src = tmp / "src"
    for path in files:
        target = src / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = tmp / "wheels"
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-cache-dir",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        log_file=log_file,
        timeout=300,
        env=env,
    )
    [wheel] = sorted(wheels.glob("gomemlimit_operator-*.whl"))
    return wheel


def _passwd_files(root: Path) -> list[ImageFile]:
    passwd = (root / "etc" / "passwd").read_text()
    group = (root / "etc" / "group").read_text()
    passwd += f"{USER_NAME}:x:{UID}:{GID}:{USER_NAME}:/tmp:/usr/sbin/nologin\n"
    group += f"{USER_NAME}:x:{GID}:\n"
    return [
        ImageFile("/etc/passwd", passwd.encode(), mode=0o644),
        ImageFile("/etc/group", group.encode(), mode=0o644),
    ]


def _labels(version: str, base: BaseRootfs) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": REPOSITORY,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": SOURCE_URL,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.base.name": f"debootstrap:{base.info['suite']}-minbase",
        "io.gomemlimit.base.key": base.key,
        "io.gomemlimit.python": str(base.info["python"]),
    }


def _drop_old_builds(cache: Path, *, keep: Path, count: int = 3) -> None:
    """Keep the ``count`` newest operator archives (``keep`` among them); delete the rest."""
    builds = sorted(
        (cache / "images").glob("operator-*/info.json"), key=lambda p: p.stat().st_mtime
    )
    for info in builds[:-count]:
        if info.parent != keep:
            shutil.rmtree(info.parent, ignore_errors=True)


def _minor(base: BaseRootfs) -> str:
    return ".".join(str(base.info["python"]).split(".")[:2])


def _built(info: Mapping[str, Any]) -> BuiltImage:
    return BuiltImage(
        path=Path(info["path"]),
        repository=info["repository"],
        tag=info["tags"][0],
        image_id=info["image_id"],
        layer_diff_id=info["layer_diff_id"],
        config=info["config"],
        tags=tuple(info["tags"]),
    )


def build_operator_image(
    *, cache: Path | None = None, force: bool = False, log: Log = _stderr
) -> BuiltImage:
    """Build (or find in the cache) the operator's docker-archive; needs root the first time.

    ``.ref`` is ``gomemlimit-operator:<version>``; ``.refs`` adds the image-ID tag. A warm call
    (same base, sources, pip and recipe) returns in well under a second.
    """
    cache = cache or cache_root()
    versions = read_versions()
    base = ensure_base(cache=cache, log=log)
    version = operator_version()
    pip_version = versions["OPERATOR_PIP_VERSION"]
    files = _source_files()
    key = _key(
        base.key,
        _source_digest(files),
        pip_version,
        hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        hashlib.sha256((Path(__file__).parent / "images.py").read_bytes()).hexdigest(),
    )
    final = cache / "images" / f"operator-{version}-{key}"
    with _locked(cache, log):
        if not force and (final / "info.json").is_file() and (final / "image.tar").is_file():
            return _built(json.loads((final / "info.json").read_text()))
        if os.geteuid() != 0:
            raise ImageError("building the operator image needs root (chroot)")
        t0 = time.monotonic()
        log_file = cache / "logs" / "image-operator.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("")
        log(f"building {REPOSITORY}:{version} on base {base.key}")
        with _build_dir(cache, f"operator-{key}") as tmp:
            root = tmp / "root"
            root.mkdir()
            _run(
                ["tar", "--numeric-owner", "-xpf", str(base.tar), "-C", str(root)],
                log_file=log_file,
                timeout=300,
            )
            build = root / "tmp" / "build"
            build.mkdir(parents=True)
            wheel = shutil.copy2(_project_wheel(files, tmp, log_file), build)
            pip = shutil.copy2(_pip_wheel(cache, pip_version, log_file), build)
            ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
            shutil.copy2(
                ca if ca.is_file() else root / "etc/ssl/certs/ca-certificates.crt", build / "ca.pem"
            )
            (root / "etc" / "resolv.conf").write_text(Path("/etc/resolv.conf").read_text())
            pip_cache = cache / "images" / "pip-cache"
            pip_cache.mkdir(parents=True, exist_ok=True)
            inside_cache = root / "tmp" / "pip-cache"
            pip_cache.rename(inside_cache)  # same filesystem; moved back in `finally`
            env = {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/tmp",
                "LANG": "C.UTF-8",
                "PIP_CACHE_DIR": "/tmp/pip-cache",
                "PIP_CERT": "/tmp/build/ca.pem",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_DEFAULT_TIMEOUT": os.environ.get("PIP_DEFAULT_TIMEOUT", "60"),
                "PIP_ROOT_USER_ACTION": "ignore",
                **{
                    k: v
                    for k, v in os.environ.items()
                    if k in ("PIP_INDEX_URL", "HTTPS_PROXY", "https_proxy")
                },
            }
            pip_cmd = [f"{VENV}/bin/python", f"/tmp/build/{Path(pip).name}/pip"]
            try:
                _run(
                    ["chroot", str(root), "python3", "-m", "venv", "--without-pip", VENV],
                    log_file=log_file,
                    timeout=120,
                    env=env,
                )
                _run(
                    [
                        "chroot",
                        str(root),
                        *pip_cmd,
                        "install",
                        "-q",
                        "--no-compile",
                        "--only-binary=:all:",
                        f"/tmp/build/{Path(wheel).name}",
                    ],
                    log_file=log_file,
                    timeout=900,
                    env=env,
                )
                frozen = _run(
                    ["chroot", str(root), *pip_cmd, "list", "--format=freeze"],
                    log_file=log_file,
                    timeout=120,
                    env=env,
                ).split()
                site = root / VENV.lstrip("/") / "lib" / f"python{_minor(base)}" / "site-packages"
                _prune(site, APP_PRUNE)
                _run(
                    ["chroot", str(root), f"{VENV}/bin/python", *COMPILE, f"{VENV}/lib"],
                    log_file=log_file,
                    timeout=600,
                    env=env,
                )
                _run(
                    ["chroot", str(root), f"{VENV}/bin/python", "-c", SMOKE_IMPORTS],
                    log_file=log_file,
                    timeout=120,
                    env=env,
                )
                smoke = _run(
                    ["chroot", str(root), *ENTRYPOINT, "version"],
                    log_file=log_file,
                    timeout=120,
                    env=env,
                ).strip()
            finally:
                if inside_cache.exists():
                    inside_cache.rename(pip_cache)
            if version not in smoke:
                raise ImageError(f"`gomemlimit version` in the build root said {smoke!r}")
            staged = tmp / "out"
            staged.mkdir()
            dir_layer(root, tmp / "app.tar", under=VENV.lstrip("/"))
            image = build_image(
                staged / "image.tar",
                repository=REPOSITORY,
                tag=version,
                tag_by_id=True,
                layers=[base.tar, tmp / "app.tar"],
                files=_passwd_files(root),
                entrypoint=ENTRYPOINT,
                cmd=CMD,
                user=USER,
                env=ENV,
                workdir=WORKDIR,
                labels=_labels(version, base),
                exposed_ports=PORTS,
            )
            info = {
                "path": str(final / "image.tar"),
                "repository": image.repository,
                "tags": list(image.tags),
                "image_id": image.image_id,
                "layer_diff_id": image.layer_diff_id,
                "config": image.config,
                "packages": frozen,
                "base": base.key,
                "sizes": _measure(image.path),
                "build_seconds": round(time.monotonic() - t0, 1),
            }
            (staged / "info.json").write_text(json.dumps(info, indent=1) + "\n")
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
        _drop_old_builds(cache, keep=final)
        log(f"{REPOSITORY}:{version} ready in {time.monotonic() - t0:.0f}s: {final}/image.tar")
        return _built(info)


def image_size(image: BuiltImage) -> dict[str, int]:
    """Sizes in bytes: the archive, each layer (uncompressed) and their gzip'd total.

    Measured once at build time (``info.json`` next to the archive), else now.
    """
    info = image.path.parent / "info.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return dict(json.loads(info.read_text())["sizes"])
    return _measure(image.path)


def _measure(path: Path) -> dict[str, int]:
    import zlib

    sizes: dict[str, int] = {"archive": path.stat().st_size}
    gz = 0
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if member.name.endswith("/layer.tar"):
                sizes[f"layer {member.name.split('/')[0][:12]}"] = member.size
                stream = archive.extractfile(member)
                assert stream is not None
                compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
                for chunk in iter(lambda s=stream: s.read(1 << 20), b""):  # type: ignore[misc]
                    gz += len(compressor.compress(chunk))
                gz += len(compressor.flush())
    sizes["gzip"] = gz
    return sizes


def import_operator_image(node: RealNode, image: BuiltImage | None = None) -> BuiltImage:
    """Import the image (built if not given) into the real node's containerd (``k8s.io``)."""
    image = image or build_operator_image()
    import_image(image, ctr=node.ctr_path, address=node.containerd_sock)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.operator_image")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or find cached) the operator image")
    build.add_argument("--force", action="store_true", help="rebuild the app layers")
    build.add_argument("--force-base", action="store_true", help="rebuild the base rootfs too")
    build.add_argument("--json", action="store_true", help="print a JSON summary")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        if args.force_base:
            ensure_base(force=True)
        image = build_operator_image(force=args.force or args.force_base)
    except ImageError as exc:
        print(f"operator-image: FAILED: {exc}", file=sys.stderr)
        return 1
    sizes = image_size(image)
    summary = {
        "path": str(image.path),
        "refs": list(image.refs),
        "image_id": image.image_id,
        "sizes": sizes,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(image.path)
        print("refs: " + " ".join(image.refs))
        print(
            f"size: {sizes['archive'] / 2**20:.1f} MiB uncompressed, "
            f"{sizes['gzip'] / 2**20:.1f} MiB gzip'd ({summary['seconds']}s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
