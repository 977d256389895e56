"""Unit tests of tests/cluster/images.py: the docker-archive layout `ctr images import` reads.

(The real import into containerd runs in tests/e2e/test_real_node.py.)
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.cluster.images import ImageError, ImageFile, build_image, layer_tar


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_archive_layout_config_and_layer(tmp_path: Path) -> None:
    binary = tmp_path / "app"
    binary.write_bytes(b"\x7fELF fake static binary")
    binary.chmod(0o755)
    image = build_image(
        tmp_path / "out" / "app.tar",
        repository="gomemlimit.local/app",
        files=[ImageFile("/app", binary), ImageFile("/etc/app/config.json", b"{}")],
        entrypoint=["/app"],
        cmd=["-flag"],
        user="65532:65532",
        env={"GODEBUG": "madvdontneed=1"},
        labels={"k": "v"},
    )
    assert image.ref == f"gomemlimit.local/app:{image.image_id.removeprefix('sha256:')[:12]}"
    with tarfile.open(image.path) as archive:
        names = set(archive.getnames())
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        [entry] = manifest
        config_bytes = archive.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        [layer_name] = entry["Layers"]
        layer = archive.extractfile(layer_name).read()  # type: ignore[union-attr]
    assert {"manifest.json", entry["Config"], layer_name} <= names
    assert entry["RepoTags"] == [image.ref]
    # The config is named by its digest, and names the layer by its uncompressed digest.
    assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()],
    }
    assert config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/app"]
    assert config["config"]["Cmd"] == ["-flag"]
    assert config["config"]["User"] == "65532:65532"
    assert "GODEBUG=madvdontneed=1" in config["config"]["Env"]
    assert config["config"]["Labels"] == {"k": "v"}
    # The layer: files with modes, parent dirs, /tmp; relative names, root-owned, mtime 0.
    files = members(layer)
    assert sorted(files) == ["app", "etc", "etc/app", "etc/app/config.json", "tmp"]
    assert files["app"].mode == 0o755
    assert files["app"].isfile()
    assert files["etc/app/config.json"].mode == 0o644
    assert files["tmp"].isdir()
    assert files["tmp"].mode == 0o1777
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in files.values())


def test_same_files_same_image_id(tmp_path: Path) -> None:
    def build(name: str, content: bytes) -> str:
        return build_image(
            tmp_path / name,
            repository="r/x",
            files=[ImageFile("/x", content, mode=0o755)],
            entrypoint=["/x"],
        ).image_id

    assert build("a.tar", b"one") == build("b.tar", b"one")
    assert build("c.tar", b"two") != build("a.tar", b"one")


@pytest.mark.parametrize("path", ["/", "../etc/passwd", "/a/../../b"])
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(ImageError):
        layer_tar([ImageFile(path, b"x")])


def test_duplicate_and_file_dir_clash_refused() -> None:
    with pytest.raises(ImageError):
        layer_tar([ImageFile("/a", b"1"), ImageFile("a", b"2")])
    with pytest.raises(ImageError):
        layer_tar([ImageFile("/a", b"1"), ImageFile("/a/b", b"2")])


def test_entrypoint_required(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        build_image(tmp_path / "x.tar", repository="r/x", files=[], entrypoint=[])
