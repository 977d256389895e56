"""Unit tests of the operator image (tests/cluster/operator_image.py) and the Dockerfile.

* The Dockerfile and the daemon-less builder state the same contract (user, entrypoint,
  virtualenv, environment, ports, pruned paths, pins): parsed, not trusted.
* ``dir_layer`` is deterministic and keeps symlinks and hard links.
* The built image's layers: config, files present, no tests, no pip, nothing owned by the
  runtime user, bytecode that a read-only root filesystem never recompiles. This needs the
  image: cached, or built here (root, Debian's archive and PyPI; about a minute cold). Without
  it the test skips outside CI and fails in CI.

Running it in a pod on the real node is tests/e2e/test_operator_image.py.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import operator_image as oi
from tests.cluster.controlplane import read_versions
from tests.cluster.images import BuiltImage, ImageError
from tests.cluster.realnode import ci_requires_real_node

DOCKERFILE = oi.REPO / "Dockerfile"


def instructions(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments); the global ARGs are stage 0."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(rest.split())))
    return stages


def key_values(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return instructions(DOCKERFILE.read_text())


def only(stage: list[tuple[str, str]], word: str) -> str:
    [args] = [a for w, a in stage if w == word]
    return args


def runs(stage: list[tuple[str, str]]) -> str:
    return "\n".join(a for w, a in stage if w == "RUN")


def test_dockerfile_final_stage_matches_the_builder(dockerfile: list[Any]) -> None:
    final = dockerfile[-1]
    assert only(final, "FROM") == "base"
    assert only(final, "USER") == oi.USER
    assert json.loads(only(final, "ENTRYPOINT")) == list(oi.ENTRYPOINT)
    assert json.loads(only(final, "CMD")) == list(oi.CMD)
    assert only(final, "WORKDIR") == oi.WORKDIR
    assert key_values(only(final, "ENV")) == dict(oi.ENV)
    assert {f"{p}/tcp" for p in only(final, "EXPOSE").split()} == set(oi.PORTS)
    assert only(final, "COPY") == f"--from=build {oi.VENV} {oi.VENV}"
    # The user's passwd and group lines are the ones the builder writes.
    passwd, group = (f.data().decode().splitlines()[-1] for f in oi._passwd_files(_fake_etc()))
    assert f"'{passwd}' >> /etc/passwd" in runs(final)
    assert f"'{group}' >> /etc/group" in runs(final)
    labels = key_values(only(final, "LABEL"))
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert only(final, "ARG") == f"VERSION={oi.operator_version()}"
    assert labels["org.opencontainers.image.source"] == oi.SOURCE_URL


def _fake_etc() -> Path:
    import tempfile

    root = Path(tempfile.mkdtemp())
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def test_dockerfile_build_and_base_stages_match_the_builder(dockerfile: list[Any]) -> None:
    versions = read_versions()
    [(word, base_arg)] = dockerfile[0]
    assert word == "ARG"
    assert base_arg.startswith("BASE_IMAGE=debian:")
    assert versions["OPERATOR_BASE_SUITE"] in base_arg
    base, build = dockerfile[1], dockerfile[2]
    assert only(base, "FROM") == "${BASE_IMAGE} AS base"
    assert only(build, "FROM") == "base AS build"
    base_run = runs(base)
    for package in versions["OPERATOR_BASE_PACKAGES"].split(","):
        assert f" {package}" in base_run
    compile_ = " ".join(oi.COMPILE)
    assert f"python3 {compile_} /usr/lib/python3.11 /usr/lib/python3" in base_run
    for pattern in oi.BASE_PRUNE:
        if pattern.startswith(("var/", "usr/")):
            assert f"/{pattern}" in base_run, pattern
    assert only(build, "ARG") == f"PIP_VERSION={versions['OPERATOR_PIP_VERSION']}"
    build_run = runs(build)
    assert f"python3 -m venv --without-pip {oi.VENV};" in build_run
    assert "--no-cache-dir --no-compile --only-binary=:all:" in build_run
    assert f"rm -rf {' '.join(oi.APP_PRUNE)};" in build_run
    assert f"cd {oi.VENV}/lib/python3.11/site-packages;" in build_run
    assert f"{oi.VENV}/bin/python {compile_} {oi.VENV}/lib;" in build_run
    assert f'{oi.VENV}/bin/python -c "{oi.SMOKE_IMPORTS}"' in build_run
    copies = [a for w, a in build if w == "COPY"]
    assert copies == ["pyproject.toml README.md /src/", "operator /src/operator"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = set((oi.REPO / ".dockerignore").read_text().split())
    assert {"tests", ".git", ".venv"} <= ignored
    assert not {"operator", "pyproject.toml", "README.md"} & ignored


def test_dir_layer_is_deterministic_with_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt" / "app" / "bin").mkdir(parents=True)
    (root / "opt" / "app" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "opt" / "app" / "bin" / "tool").chmod(0o755)
    (root / "opt" / "app" / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "opt" / "app" / "hard").hardlink_to(root / "opt" / "app" / "bin" / "tool")
    (root / "other").write_text("not in the layer")
    first = oi.dir_layer(root, tmp_path / "a.tar", under="opt/app")
    second = oi.dir_layer(root, tmp_path / "b.tar", under="opt/app")
    assert first == second
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [
        "opt",
        "opt/app",
        "opt/app/bin",
        "opt/app/bin/python",
        "opt/app/bin/tool",
        "opt/app/hard",
    ]
    assert members["opt/app/bin/python"].issym()
    assert members["opt/app/bin/python"].linkname == "/usr/bin/python3"
    assert members["opt/app/hard"].islnk()
    assert members["opt/app/hard"].linkname == "opt/app/bin/tool"
    assert members["opt/app/bin/tool"].mode == 0o755
    assert all(m.mtime == 0 and m.uname == "" for m in members.values())


def test_mounts_under_reads_mountinfo(tmp_path: Path) -> None:
    assert oi.mounts_under(tmp_path) == []
    assert Path("/proc") in oi.mounts_under(Path("/proc")) or not Path("/proc/self").exists()


# --- the built image ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    try:
        return oi.build_operator_image(log=lambda line: None)
    except ImageError as exc:
        if ci_requires_real_node():
            pytest.fail(f"CI must build the operator image: {exc}", pytrace=False)
        pytest.skip(f"cannot build the operator image here: {exc}")


def layers(image: BuiltImage) -> tuple[dict[str, Any], list[dict[str, tarfile.TarInfo]]]:
    """The manifest entry and config, and each layer's members by name (bottom first)."""
    with tarfile.open(image.path) as archive:
        [entry] = json.loads(_member(archive, "manifest.json"))
        config = json.loads(_member(archive, entry["Config"]))
        found = []
        for name in entry["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(_member(archive, name))) as layer:
                found.append({m.name: m for m in layer.getmembers()})
    return {"entry": entry, "config": config}, found


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    data = archive.extractfile(name)
    assert data is not None, name
    return data.read()


def read(image: BuiltImage, layer: int, member: str) -> bytes:
    """One file from the image's ``layer``-th layer."""
    with tarfile.open(image.path) as archive:
        [entry] = json.loads(_member(archive, "manifest.json"))
        outer = _member(archive, entry["Layers"][layer])
    with tarfile.open(fileobj=io.BytesIO(outer)) as tar:
        return _member(tar, member)


def test_image_config(image: BuiltImage) -> None:
    meta, found = layers(image)
    version = oi.operator_version()
    assert image.ref == f"{oi.REPOSITORY}:{version}"
    assert meta["entry"]["RepoTags"] == list(image.refs)
    assert image.refs[1] == f"{oi.REPOSITORY}:{image.image_id.removeprefix('sha256:')[:12]}"
    config = meta["config"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/opt/gomemlimit/bin/gomemlimit"]
    assert config["Cmd"] == ["operator"]
    assert dict(e.split("=", 1) for e in config["Env"]) == dict(oi.ENV)
    assert config["Labels"]["org.opencontainers.image.version"] == version
    assert config["Labels"]["org.opencontainers.image.source"] == oi.SOURCE_URL
    assert set(config["ExposedPorts"]) == set(oi.PORTS)
    assert len(found) == 3  # base, app, passwd + /tmp


def test_image_layers(image: BuiltImage) -> None:
    _, (base, app, top) = layers(image)
    site = "opt/gomemlimit/lib/python3.11/site-packages"
    # the base: Python, CA certificates, no docs, no apt lists, no device nodes
    assert "usr/bin/python3.11" in base
    assert "etc/ssl/certs/ca-certificates.crt" in base
    assert not [n for n in base if re.match(r"usr/share/(doc|man|locale)/.", n)]
    assert not [n for n in base if n.startswith(("var/lib/apt/lists/", "dev/", "proc/"))]
    assert not [m for m in base.values() if m.ischr() or m.isblk() or m.isfifo()]
    assert not [n for n in base if n.startswith("opt/gomemlimit")]
    # the app: only the virtualenv
    assert all(n == "opt" or n.startswith("opt/gomemlimit") for n in app)
    assert app["opt/gomemlimit/bin/gomemlimit"].mode & 0o111
    assert app["opt/gomemlimit/bin/python3"].linkname == "/usr/bin/python3"
    assert f"{site}/gomemlimit_operator/__init__.py" in app
    assert f"{site}/gomemlimit_operator/cli/main.py" in app
    for package in ("kopf", "kubernetes", "pydantic", "cryptography", "yaml", "orjson"):
        assert f"{site}/{package}" in app, package
    assert not [
        n for n in app if n.startswith((f"{site}/tests", f"{site}/pip", f"{site}/setuptools"))
    ]
    assert f"{site}/kubernetes/aio" not in app
    assert not [n for n in app if "/tests/" in n or n.endswith("/tests")]
    assert not [n for n in app if n.startswith("opt/gomemlimit/bin/pip")]
    # bytecode is hash-based and unchecked (PEP 552 flags = 1): never stale at mtime 0
    pyc = f"{site}/gomemlimit_operator/__pycache__/__init__.cpython-311.pyc"
    assert int.from_bytes(read(image, 1, pyc)[4:8], "little") == 1
    stdlib_pyc = "usr/lib/python3.11/__pycache__/os.cpython-311.pyc"
    assert int.from_bytes(read(image, 0, stdlib_pyc)[4:8], "little") == 1
    # the user, and a root filesystem the user cannot write to (outside /tmp)
    passwd = read(image, 2, "etc/passwd").decode()
    assert "gomemlimit:x:65532:65532:gomemlimit:/tmp:/usr/sbin/nologin" in passwd.splitlines()
    assert top["tmp"].mode == 0o1777
    for layer in (base, app, top):
        assert all(m.mtime == 0 for m in layer.values())
        assert not [n for n, m in layer.items() if m.uid == 65532 or m.gid == 65532]
        writable = [
            n
            for n, m in layer.items()
            if m.mode & 0o002 and not m.issym() and n not in ("tmp", "var/tmp", "run/lock")
        ]
        assert writable == [], writable


def test_warm_build_is_cached(image: BuiltImage) -> None:
    import time

    t0 = time.monotonic()
    again = oi.build_operator_image(log=lambda line: None)
    assert time.monotonic() - t0 < 5
    assert again == image
    sizes = oi.image_size(again)
    assert sizes["archive"] < 400 * 2**20, sizes
