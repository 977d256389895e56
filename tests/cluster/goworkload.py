"""Build the Go workload (tests/goworkload) into an image for the real node.

from tests.cluster.goworkload import build_goworkload_image
image = build_goworkload_image(work_dir)      # static binary + docker-archive
node.import_image(image.path)                  # then pods use image.ref, pullPolicy Never
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .images import BuiltImage, ImageFile, build_image, go_build

REPO = Path(__file__).resolve().parents[2]
GOWORKLOAD_DIR = REPO / "tests" / "goworkload"
REPOSITORY = "gomemlimit.local/goworkload"
USER = "65532:65532"

__all__ = ["GOWORKLOAD_DIR", "REPOSITORY", "build_goworkload_image"]


def _go_version() -> str:
    proc = subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=False, timeout=60
    )
    return proc.stdout.strip() or "unknown"


def build_goworkload_image(work_dir: Path) -> BuiltImage:
    """Static goworkload binary (pinned module, local Go toolchain) packed as a one-layer image.

    The tag is derived from the content, so a changed program is a new image.
    """
    binary = go_build(GOWORKLOAD_DIR, work_dir / "goworkload")
    return build_image(
        work_dir / "goworkload.tar",
        repository=REPOSITORY,
        files=[ImageFile("/goworkload", binary, mode=0o755)],
        entrypoint=["/goworkload"],
        user=USER,
        labels={"io.gomemlimit.go-version": _go_version()},
    )
